//! The pool's error: a small matchable kind, what was being done, and the cause.

use std::fmt;

use crate::pdata;
use crate::units::MetaBlock;

/// What kind of failure, for callers that map errors (e.g. to NBD errno values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No free data block (or metadata block) is left.
    NoSpace,
    /// An offset, length, block or id beyond what the pool or volume holds.
    OutOfRange,
    /// The pool refuses writes (opened read-only, needs_check, or failed earlier).
    ReadOnly,
    NotFound,
    Exists,
    /// Metadata failed validation; `block` names the metadata block concerned.
    Corrupt {
        block: MetaBlock,
    },
    /// A device read, write or flush failed.
    Io,
    /// A bad argument (name rules, block size, ...).
    Invalid,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::NoSpace => write!(f, "no space"),
            ErrorKind::OutOfRange => write!(f, "out of range"),
            ErrorKind::ReadOnly => write!(f, "read-only"),
            ErrorKind::NotFound => write!(f, "not found"),
            ErrorKind::Exists => write!(f, "already exists"),
            ErrorKind::Corrupt { block } => write!(f, "corrupt metadata (block {block})"),
            ErrorKind::Io => write!(f, "I/O error"),
            ErrorKind::Invalid => write!(f, "invalid argument"),
        }
    }
}

units::error_type!(
    /// A pool error. `Display` prints the kind and the context; the cause is the `source`.
    pub struct Error(ErrorKind);
);

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::with_source(ErrorKind::Io, context, source)
    }

    /// Wraps a persistent-data error with what the pool was doing.
    pub fn pdata(doing: &str, e: pdata::Error) -> Self {
        let kind = match &e {
            pdata::Error::Corrupt { block, .. } => ErrorKind::Corrupt { block: *block },
            pdata::Error::BadRef { .. } => ErrorKind::Corrupt { block: MetaBlock(0) },
            pdata::Error::Io { .. } => ErrorKind::Io,
            pdata::Error::NoSpace(_) => ErrorKind::NoSpace,
        };
        Error::with_source(kind, doing, e)
    }
}

pub type Result<T> = std::result::Result<T, Error>;
