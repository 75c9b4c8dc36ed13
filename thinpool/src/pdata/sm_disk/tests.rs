//! Space-map tests.
