//! Requests the caller carries out with its own asynchronous I/O: a ublk queue submits them
//! on its io_uring instead of handing them to a worker thread that blocks in `pread`/`pwrite`.
//!
//! The pool answers where a request's bytes lie on the data device ([`Direct::runs`]) and
//! keeps them there: the plan holds the locks a blocking read or overwrite would hold for its
//! whole duration (the pool's gate, the blocks' stripes), so no copy-on-write, discard or
//! snapshot can move or recycle those blocks until the caller drops the plan after its I/O
//! completed. Every lock is only tried: a plan is offered only when nothing has to wait, and
//! the caller otherwise takes the blocking path, which waits like any request does.

use std::os::fd::RawFd;

/// One piece of a request's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// Bytes `at..at + len` of the buffer read as zeros (unmapped blocks).
    Zeros { at: usize, len: usize },
    /// Bytes `at..at + len` of the buffer are bytes `pos..pos + len` of the O_DIRECT
    /// descriptor `fd`, which the plan keeps open (see [`DirectAt`]). Buffers, positions and
    /// lengths are [`super::DIRECT_ALIGN`]-aligned; the planners check.
    Device { at: usize, len: usize, fd: RawFd, pos: u64 },
}

/// Where a device's byte range lives for a caller's own O_DIRECT I/O: one descriptor and a
/// position on it ([`super::BlockDevice::direct_at`]).
pub struct DirectAt {
    pub fd: RawFd,
    pub pos: u64,
    /// What keeps `fd` open while the plan lives, for devices whose layout can change under
    /// it (a volume group's region is remapped when it grows); `None` when the device itself
    /// owns the descriptor, the plan borrowing the pool that owns the device.
    pub keep: Option<Box<dyn Held + Send>>,
}

/// Anything a plan keeps alive until it is dropped: lock guards, markers whose drop records
/// that the request happened.
pub trait Held {}
impl<T: ?Sized> Held for T {}

/// A request's plan: where its bytes are, and what holds them (and their descriptors) there.
pub struct Direct<'a> {
    /// In buffer order, covering the request.
    pub runs: Vec<Run>,
    held: Vec<Box<dyn Held + 'a>>,
}

impl<'a> Direct<'a> {
    pub fn new(runs: Vec<Run>) -> Self {
        Self { runs, held: Vec::new() }
    }

    /// Keeps `h` until the plan is dropped (in the order they were added).
    pub fn hold(mut self, h: impl Held + 'a) -> Self {
        self.held.push(Box::new(h));
        self
    }

    /// How many device I/Os the plan takes.
    pub fn device_runs(&self) -> usize {
        self.runs.iter().filter(|r| matches!(r, Run::Device { .. })).count()
    }
}

impl std::fmt::Debug for Direct<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct").field("runs", &self.runs).field("held", &self.held.len()).finish()
    }
}
