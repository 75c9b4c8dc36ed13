//! Sizes on the command line: the one grammar every lamina binary reads (see the `units`
//! crate), and the two ways sizes are printed (lvs-style binary, Docker-style decimal).

pub use units::{binary_size, human_size, parse_size};
