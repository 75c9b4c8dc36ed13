//! Btree tests.
