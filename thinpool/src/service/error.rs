//! The service's error: a small matchable kind (what the NBD edge maps to an errno), the
//! context, and the pool or group error underneath.

use std::fmt;

use crate::pool::{self, ErrorKind as PoolKind};
use crate::vg::{VgError, VgErrorKind};

/// What kind of failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The data space stayed full for `no_space_timeout` (or at once with
    /// `error_if_no_space`). NBD: ENOSPC.
    NoSpace,
    /// The pool takes no changes: metadata ran out (needs_check is set), it was opened
    /// read-only, or an earlier failure stopped it. NBD: EPERM (read-only export).
    ReadOnly,
    /// The volume has open handles and deferred deletion is off.
    Busy,
    /// `dm.min_free_space` refused a new volume (the context is Docker's message).
    MinFreeSpace,
    NotFound,
    Exists,
    OutOfRange,
    Invalid,
    Corrupt,
    Io,
    /// The volume group refused (no free extents, bad device, ...).
    Group(VgErrorKind),
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::NoSpace => write!(f, "no space"),
            ErrorKind::ReadOnly => write!(f, "read-only"),
            ErrorKind::Busy => write!(f, "device is busy"),
            ErrorKind::MinFreeSpace => write!(f, "not enough free space"),
            ErrorKind::NotFound => write!(f, "not found"),
            ErrorKind::Exists => write!(f, "already exists"),
            ErrorKind::OutOfRange => write!(f, "out of range"),
            ErrorKind::Invalid => write!(f, "invalid argument"),
            ErrorKind::Corrupt => write!(f, "corrupt metadata"),
            ErrorKind::Io => write!(f, "I/O error"),
            ErrorKind::Group(k) => write!(f, "{k}"),
        }
    }
}

units::error_type!(
    /// A service error. `Display` prints the kind and the context; the cause is the `source`.
    pub struct Error(ErrorKind);
);

impl Error {
    /// Wraps a pool error with what the service was doing (the pool's error is the source).
    pub fn pool(doing: &str, e: pool::Error) -> Self {
        let kind = match e.kind() {
            PoolKind::NoSpace => ErrorKind::NoSpace,
            PoolKind::ReadOnly => ErrorKind::ReadOnly,
            PoolKind::NotFound => ErrorKind::NotFound,
            PoolKind::Exists => ErrorKind::Exists,
            PoolKind::OutOfRange => ErrorKind::OutOfRange,
            PoolKind::Invalid => ErrorKind::Invalid,
            PoolKind::Corrupt { .. } => ErrorKind::Corrupt,
            PoolKind::Io => ErrorKind::Io,
        };
        Error::with_source(kind, doing, e)
    }

    pub fn vg(doing: &str, e: VgError) -> Self {
        Error::with_source(ErrorKind::Group(e.kind()), doing, e)
    }

    pub fn io(doing: impl Into<String>, e: std::io::Error) -> Self {
        Error::with_source(ErrorKind::Io, doing, e)
    }
}

pub type Result<T> = std::result::Result<T, Error>;
