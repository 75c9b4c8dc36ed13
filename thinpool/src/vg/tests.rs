//! In-crate tests: the block-device contract run against a region.
