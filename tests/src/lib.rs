//! Shared helpers for lamina's integration tests.
//!
//! Host-tier tests live in `tests/host_*.rs`, VM-tier tests in `tests/vm_*.rs`. A test whose
//! tool or kernel feature is missing fails loudly (or is skipped with the reason); it never
//! passes silently.
