//! `tribe-shop`: the example shop as a Tribe node (placeholder until the node API lands).
fn main() {}
