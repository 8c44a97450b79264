//! `tribe-operator local FILE`: placeholder.
