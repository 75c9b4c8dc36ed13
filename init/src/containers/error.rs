//! The container store's error: a kind the agent (and a test) can match, and the message the
//! user sees, which names the image, container or volume concerned.

/// What went wrong, in the terms of Docker's API errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No such image, container or volume.
    NotFound,
    /// A name in use, or something in use by something else.
    Conflict,
    /// A request or an archive that does not make sense.
    Invalid,
    /// The store is not up, or shutting down.
    Unavailable,
    /// The container is not running (exec) or is (rm without force).
    State,
    /// A file, process or kernel operation failed.
    Io,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{msg}")]
pub struct StoreError {
    pub kind: Kind,
    pub msg: String,
}

impl StoreError {
    pub fn new(kind: Kind, msg: impl Into<String>) -> StoreError {
        StoreError { kind, msg: msg.into() }
    }

    /// A failed operation; the message is the whole chain of `e`, since a `StoreError` keeps
    /// text only (`e`'s own line does not repeat its cause).
    pub fn io(what: impl std::fmt::Display, e: impl std::error::Error + 'static) -> StoreError {
        StoreError::new(Kind::Io, format!("{what}: {}", units::chain(&e)))
    }

    pub fn no_such_container(name: &str) -> StoreError {
        StoreError::new(Kind::NotFound, format!("no such container: {name}"))
    }
}

impl From<overlay::Error> for StoreError {
    fn from(e: overlay::Error) -> StoreError {
        use overlay::ErrorKind as K;
        let kind = match e.kind() {
            K::NotFound => Kind::NotFound,
            K::Conflict => Kind::Conflict,
            K::Invalid | K::Escape | K::Limit | K::DigestMismatch => Kind::Invalid,
            K::Unsupported | K::Io => Kind::Io,
        };
        StoreError::new(kind, units::chain(&e))
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;
