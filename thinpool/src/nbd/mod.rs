//! The NBD frontend: the protocol's codecs and the server that speaks it over TCP, unix
//! sockets and the kernel client's socketpairs, in front of the export seam (`crate::export`).
//!
//! ```text
//! proto    pure codecs: wire constants, options, requests, replies (round-trip, proptest, fuzz)
//! server   listeners, allowlist, limits, committer, shutdown; negotiate (the handshake state
//!          machine) and conn (the transmission phase: leader/follower workers, batched replies)
//! ```
//!
//! Negotiated features: fixed newstyle + NO_ZEROES, EXPORT_NAME, GO, INFO (NAME,
//! DESCRIPTION, BLOCK_SIZE), LIST, ABORT, STRUCTURED_REPLY, LIST/SET_META_CONTEXT with
//! `base:allocation`, EXTENDED_HEADERS. Commands: READ (sparse with structured replies), WRITE,
//! DISC, FLUSH, TRIM, CACHE, WRITE_ZEROES (NO_HOLE, FAST_ZERO), BLOCK_STATUS (REQ_ONE); FUA on
//! all; CAN_MULTI_CONN (all connections share the export, so a backend flush covers them all).
//!
//! Errors follow the spec's guidance: writes and zeroing past the end → ENOSPC, other
//! out-of-range requests → EINVAL, writes to a read-only export → EPERM, FAST_ZERO that would
//! not be fast → ENOTSUP, backend I/O failures → EIO.

pub mod proto;
pub mod server;

pub use crate::export::{
    BlockSize, Catalog, ErrorKind, Export, ExportError, ExportInfo, ExportResult, Extent,
};
pub use server::{
    kernel_flags, serve_connected, transmission_flags, Server, ServerOptions, BASE_ALLOCATION,
    BASE_ALLOCATION_ID,
};
