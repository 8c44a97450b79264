//! Leader election: placeholder.
