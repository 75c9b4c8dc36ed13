//! The NBD protocol as pure codecs: bytes in, typed messages out, and back. Nothing here does
//! I/O or knows an export, so every check on untrusted input (lengths, ranges, flags, strings)
//! is covered by the `rt_*` round-trip tests, the property tests and the fuzz targets.
//!
//! ```text
//! wire   constants of the spec (magics, options, commands, flags, errors), ProtoError,
//!        the bounds-checked cursor every decoder reads through
//! opt    handshake: client options and the server's option replies
//! msg    transmission: requests (compact and extended headers) and simple/structured replies
//! ```
//!
//! Source: the NBD protocol, doc/proto.md of NetworkBlockDevice/nbd.

pub mod msg;
pub mod opt;
pub mod wire;

#[cfg(test)]
mod tests;
