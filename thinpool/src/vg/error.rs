//! The volume group's error type: a small matchable kind, the context (device, offset, what was
//! being done) and the underlying I/O error if there was one.

use std::fmt;
use std::io;

/// What went wrong, for callers that branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VgErrorKind {
    /// A read, write or flush of an underlying device failed.
    Io,
    /// Group metadata or a label failed to decode or is inconsistent.
    Corrupt,
    /// No lamina label on the devices given to `open`.
    NotAGroup,
    /// The device holds a filesystem, partition table or other signature and force was not given.
    Signature,
    /// The device already holds a lamina group created with different setup values.
    ConfigChanged,
    /// A `dm.*` option is missing its value, malformed or out of range.
    InvalidConfig,
    /// Not enough free extents for the requested allocation.
    NoSpace,
    /// A device named in the group metadata was not among the devices given.
    MissingDevice,
    /// A device is too small to hold the metadata area and one extent.
    TooSmall,
    /// A dm-thin limit would be exceeded (metadata larger than 15.875 GiB).
    Limit,
    /// The request makes no sense for this group (empty device list, duplicate device, ...).
    Usage,
    /// The pool over the group's regions failed (its error is the source).
    Pool,
}

impl fmt::Display for VgErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VgErrorKind::Io => "I/O error",
            VgErrorKind::Corrupt => "corrupt volume group metadata",
            VgErrorKind::NotAGroup => "not a lamina volume group",
            VgErrorKind::Signature => "device holds an existing signature",
            // Docker's wording, kept exactly so operators' searches find it.
            VgErrorKind::ConfigChanged => "changing direct-lvm config is not supported",
            VgErrorKind::InvalidConfig => "invalid pool configuration",
            VgErrorKind::NoSpace => "insufficient free extents in the volume group",
            VgErrorKind::MissingDevice => "volume group device missing",
            VgErrorKind::TooSmall => "device too small",
            VgErrorKind::Limit => "dm-thin size limit exceeded",
            VgErrorKind::Usage => "invalid request",
            VgErrorKind::Pool => "thin pool error",
        })
    }
}

units::error_type!(
    /// A volume group error: kind, where and what, and the I/O error underneath if any.
    pub struct VgError(VgErrorKind);
);

impl VgError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::with_source(VgErrorKind::Io, context, source)
    }
}

pub type Result<T, E = VgError> = std::result::Result<T, E>;
