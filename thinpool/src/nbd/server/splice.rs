//! A worker's pipe for spliced WRITE payloads: a large payload moves from the socket into the
//! pipe as page references (splice(2), no copy), and from there into the data device or, when
//! the export cannot take it from a pipe, back into memory.

use std::io;
use std::os::fd::OwnedFd;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::pipe::{
    fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags,
};

use super::Sock;

/// Capacity asked for a worker's pipe: a 1 MiB payload fits even when its pages arrive split
/// over more slots than whole pages would need. Above `fs.pipe-max-size` (1 MiB by default)
/// only root may go; others get half, and payloads that do not fit are read into memory.
const PIPE_SIZE: usize = 2 << 20;

/// A worker's pipe for spliced WRITE payloads.
pub(super) struct Pipe {
    pub(super) r: OwnedFd,
    pub(super) w: OwnedFd,
    pub(super) cap: usize,
    /// Bytes in the pipe not yet consumed. Non-zero once a request is done means its write
    /// failed half way: the pipe is then replaced, never read from again.
    pub(super) pending: usize,
}

impl Pipe {
    pub(super) fn new() -> io::Result<Pipe> {
        // Non-blocking: a read of more than the pipe holds (a bug) fails instead of hanging.
        let (r, w) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        let cap = fcntl_setpipe_size(&w, PIPE_SIZE)
            .or_else(|_| fcntl_setpipe_size(&w, PIPE_SIZE / 2))
            .or_else(|_| fcntl_getpipe_size(&w))?;
        Ok(Pipe { r, w, cap, pending: 0 })
    }

    /// Moves up to `len` bytes from `sock` into the pipe; stops early only when the pipe is
    /// full. Returns the bytes moved.
    pub(super) fn fill_from(&mut self, sock: &Sock, len: usize) -> io::Result<usize> {
        let mut moved = 0;
        while moved < len {
            // Non-blocking on both ends: a full pipe must not block the only thread that
            // could drain it; an empty socket is waited for with poll below.
            let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
            match splice(sock, None, &self.w, None, len - moved, flags) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    moved += n;
                    self.pending += n;
                }
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => {
                    let mut pw = [PollFd::new(&self.w, PollFlags::OUT)];
                    if poll(&mut pw, Some(&Timespec { tv_sec: 0, tv_nsec: 0 }))? == 0 {
                        return Ok(moved); // full
                    }
                    let mut ps = [PollFd::new(sock, PollFlags::IN)];
                    match poll(&mut ps, None) {
                        Ok(_) | Err(Errno::INTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(moved)
    }

    /// Reads `buf.len()` pending bytes out of the pipe.
    pub(super) fn drain_into(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut got = 0;
        while got < buf.len() {
            match rustix::io::read(&self.r, &mut buf[got..]) {
                Ok(0) | Err(Errno::AGAIN) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.pending -= got.min(self.pending);
        Ok(())
    }
}
