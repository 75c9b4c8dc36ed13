//! One error type for the store: a small matchable kind, what was being done, where, and the
//! underlying cause, as cloud-hypervisor's `block` errors are built. `Display` prints kind and
//! context, never the source again.

use std::fmt;
use std::path::Path;

/// What went wrong, coarse enough to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A system call or file operation failed.
    Io,
    /// An archive, manifest, config or tar entry is malformed or hostile.
    Invalid,
    /// A tar entry tried to reach outside the layer root.
    Escape,
    /// A limit (entry size, entry count, depth, option length) was exceeded.
    Limit,
    /// Something named by the caller does not exist.
    NotFound,
    /// Something with that name already exists or is in use.
    Conflict,
    /// A content digest did not match.
    DigestMismatch,
    /// The backing filesystem or kernel cannot do what was asked.
    Unsupported,
}

/// An error from the layer store.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    context: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Error { kind, context: context.into(), source: None }
    }

    pub fn with_source(
        kind: ErrorKind,
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error { kind, context: context.into(), source: Some(source.into()) }
    }

    /// An I/O failure while doing `what` on `path`.
    pub fn io(
        what: &str,
        path: &Path,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::with_source(ErrorKind::Io, format!("{what} {}", path.display()), source)
    }

    /// Like [`Error::io`], but a missing file is [`ErrorKind::NotFound`]: for paths the caller
    /// named, where "no such file" is the caller's mistake rather than a fault.
    pub fn io_or_not_found(what: &str, path: &Path, source: std::io::Error) -> Self {
        let kind = if source.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::NotFound
        } else {
            ErrorKind::Io
        };
        Error::with_source(kind, format!("{what} {}", path.display()), source)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn context(&self) -> &str {
        &self.context
    }

    /// The OS errno of the underlying failure, if any.
    pub fn errno(&self) -> Option<rustix::io::Errno> {
        let src = self.source.as_deref()?;
        if let Some(e) = src.downcast_ref::<rustix::io::Errno>() {
            return Some(*e);
        }
        src.downcast_ref::<std::io::Error>()
            .and_then(|e| e.raw_os_error())
            .map(rustix::io::Errno::from_raw_os_error)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ErrorKind::Io => "i/o error",
            ErrorKind::Invalid => "invalid input",
            ErrorKind::Escape => "path escapes the layer root",
            ErrorKind::Limit => "limit exceeded",
            ErrorKind::NotFound => "not found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::DigestMismatch => "digest mismatch",
            ErrorKind::Unsupported => "not supported",
        };
        write!(f, "{kind}: {}", self.context)?;
        // The source's text is shown once, as the cause; callers printing chains with
        // `{:#}` (anyhow) would otherwise see it twice, so only errno-like sources are inlined.
        if let Some(src) = &self.source {
            if src.downcast_ref::<rustix::io::Errno>().is_some()
                || src.downcast_ref::<std::io::Error>().is_some()
            {
                write!(f, " ({src})")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.source {
            Some(s)
                if s.downcast_ref::<rustix::io::Errno>().is_none()
                    && s.downcast_ref::<std::io::Error>().is_none() =>
            {
                Some(s.as_ref())
            }
            _ => None,
        }
    }
}

/// Attach path context to io results in one call.
pub trait IoContext<T> {
    fn ctx(self, what: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: &str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(what, path, e))
    }
}

impl<T> IoContext<T> for rustix::io::Result<T> {
    fn ctx(self, what: &str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(what, path, e))
    }
}

/// For unit tests: the text of `res`'s error, after checking that it failed with `kind`.
#[cfg(test)]
pub(crate) fn err_text<T: fmt::Debug>(res: Result<T>, kind: ErrorKind) -> String {
    let e = res.unwrap_err();
    assert_eq!(e.kind(), kind, "{e}");
    e.to_string()
}
