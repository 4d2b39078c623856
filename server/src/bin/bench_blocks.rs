//! Placeholder: the block bench (written next).
fn main() {}
