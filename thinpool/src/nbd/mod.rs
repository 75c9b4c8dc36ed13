//! The NBD export: a protocol codec and a multi-threaded server over a backend seam.
//!
//! ```text
//! wire        constants, ProtoError, bounds-checked cursor
//! opt, msg    pure codecs: handshake/options, requests/replies (rt_* tests, proptest, fuzz)
//! export      the seam: Export (one volume) and Catalog (the set of volumes)
//! mem, file   memory- and sparse-file-backed exports for tests and benchmarks
//! negotiate   fixed-newstyle handshake state machine
//! conn        transmission phase: leader/follower workers, vectored replies
//! server      listeners, allowlist, limits, committer, shutdown, serve_connected (kernel)
//! allow       CIDR allowlist
//! pool        Export/Catalog over the thin pool; management verbs
//! control     the daemon's JSON-lines control socket and its client
//! daemon      `thinpool serve`: pool lock, listeners, control socket, signals
//! kernel      --kernel-fd: inherited socketpair ends for the kernel client; --io-flusher
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

pub mod allow;
mod conn;
pub mod control;
pub mod daemon;
pub mod export;
pub mod file;
pub mod kernel;
pub mod mem;
pub mod msg;
mod negotiate;
pub mod opt;
pub mod pool;
pub mod server;
pub mod wire;

#[cfg(test)]
mod codec_tests;

pub use export::{
    BlockSize, Catalog, ErrorKind, Export, ExportError, ExportInfo, ExportResult, Extent,
};
pub use negotiate::{transmission_flags, BASE_ALLOCATION, BASE_ALLOCATION_ID};
pub use server::{kernel_flags, serve_connected, Server, ServerOptions};
