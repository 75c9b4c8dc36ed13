//! A write's bytes, wherever they are, and what the one write entry of each layer answers.
//!
//! Every frontend hands its WRITE to the same entry on each layer ([`crate::export::Export::write`],
//! [`crate::service::VolumeHandle::write`], [`crate::pool::Pool::write_with`]) with a
//! [`Payload`]: bytes in memory (ublk's tag buffer, an NBD payload read from the socket), or
//! the first bytes in memory and the rest still in a pipe the NBD server spliced them into
//! from the socket. The pool decides once what the write needs: an overwrite takes the piped
//! bytes straight to the data device (splice); anything that needs them in memory (allocation,
//! copy-on-write, a data device that cannot splice) reads the pipe into the caller's buffer,
//! once: a write that waits for space and is retried finds them there.

use std::cell::{Cell, RefCell};
use std::io;
use std::ops::Range;
use std::os::fd::BorrowedFd;

use super::BlockDevice;

/// What a write entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Done,
    /// Nothing was written: the write needs more than the caller allowed (an allocation, a
    /// copy, a commit or a wait). The payload is unchanged and can be written again.
    Declined,
}

/// The bytes of one write.
pub struct Payload<'a>(Inner<'a>);

enum Inner<'a> {
    Mem(&'a [u8]),
    Piped {
        /// The whole payload's room: `buf[..held]` holds its first bytes, the others wait in
        /// `pipe` until they are read into `buf[held..]` (then `read` is set).
        buf: RefCell<&'a mut [u8]>,
        held: usize,
        pipe: BorrowedFd<'a>,
        read: Cell<bool>,
    },
}

impl<'a> Payload<'a> {
    /// Bytes in memory.
    pub fn mem(buf: &'a [u8]) -> Self {
        Self(Inner::Mem(buf))
    }

    /// A payload of `buf.len()` bytes whose first `held` are in `buf` and whose others wait in
    /// `pipe`; `buf[held..]` is where they are read if they must be.
    pub fn piped(buf: &'a mut [u8], held: usize, pipe: BorrowedFd<'a>) -> Self {
        let held = held.min(buf.len());
        Self(Inner::Piped { buf: RefCell::new(buf), held, pipe, read: Cell::new(false) })
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Inner::Mem(b) => b.len(),
            Inner::Piped { buf, .. } => buf.borrow().len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether bytes still wait in a pipe.
    pub fn in_pipe(&self) -> bool {
        matches!(&self.0, Inner::Piped { read, .. } if !read.get())
    }

    /// Whether every byte is zero. The pipe is read only if the bytes in memory are all
    /// zeros (a payload is spliced only when its first bytes are not).
    pub fn is_zeros(&self) -> io::Result<bool> {
        let zero = |b: &[u8]| b.iter().all(|&x| x == 0);
        if let Inner::Piped { buf, held, read, .. } = &self.0 {
            if !read.get() && !zero(&buf.borrow()[..*held]) {
                return Ok(false);
            }
        }
        self.bytes(zero)
    }

    /// Runs `f` on the whole payload in memory, reading what waits in the pipe first.
    pub fn bytes<T>(&self, f: impl FnOnce(&[u8]) -> T) -> io::Result<T> {
        match &self.0 {
            Inner::Mem(b) => Ok(f(b)),
            Inner::Piped { buf, held, pipe, read } => {
                if !read.get() {
                    read_pipe(*pipe, &mut buf.borrow_mut()[*held..])?;
                    read.set(true);
                }
                Ok(f(&buf.borrow()))
            }
        }
    }

    /// Writes bytes `r` of the payload to `dev` at `at`. Calls must come in payload order
    /// while bytes wait in the pipe (a pipe is read once, front to back): the data device
    /// takes them straight from the pipe where it can, else they are read into memory.
    pub fn write_run(&self, dev: &dyn BlockDevice, at: u64, r: Range<usize>) -> io::Result<()> {
        match &self.0 {
            Inner::Piped { buf, held, pipe, read } if !read.get() && dev.splices() => {
                let from_buf = r.start.min(*held)..r.end.min(*held);
                if !from_buf.is_empty() {
                    dev.write_at(&buf.borrow()[from_buf.clone()], at)?;
                }
                let n = r.len() - from_buf.len();
                if n > 0 {
                    dev.write_from_pipe(*pipe, n, at + from_buf.len() as u64)?;
                }
                Ok(())
            }
            _ => self.bytes(|b| dev.write_at(&b[r], at))?,
        }
    }
}

/// Fills `buf` from the pipe, whose bytes must all be there already (an empty pipe fails
/// rather than waits).
fn read_pipe(pipe: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(pipe, &mut buf[got..]) {
            Ok(0) | Err(rustix::io::Errno::AGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("write payload: pipe ran dry {} bytes short", buf.len() - got),
                ))
            }
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemDevice;
    use std::os::fd::AsFd;

    #[test]
    fn piped_bytes_are_read_once_and_kept() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        rustix::io::write(&w, b"world").unwrap();
        let mut buf = *b"hello.....";
        let p = Payload::piped(&mut buf, 5, r.as_fd());
        assert_eq!(p.len(), 10);
        assert!(!p.is_zeros().unwrap());
        assert!(p.in_pipe(), "non-zero bytes in memory answer is_zeros without the pipe");
        assert_eq!(p.bytes(|b| b.to_vec()).unwrap(), b"helloworld");
        assert!(!p.in_pipe());
        // A retry finds the bytes in memory; the pipe is not read again (it is empty now).
        assert_eq!(p.bytes(|b| b.to_vec()).unwrap(), b"helloworld");
    }

    #[test]
    fn a_short_pipe_fails_instead_of_waiting() {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::NONBLOCK).unwrap();
        rustix::io::write(&w, b"wor").unwrap();
        let mut buf = [0u8; 10];
        let p = Payload::piped(&mut buf, 5, r.as_fd());
        let e = p.bytes(|_| ()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        assert!(e.to_string().contains("2 bytes short"), "{e}");
    }

    #[test]
    fn runs_go_to_the_device_in_payload_order() {
        let dev = MemDevice::new(64, "mem");
        let (r, w) = rustix::pipe::pipe().unwrap();
        rustix::io::write(&w, b"CDEF").unwrap();
        let mut buf = *b"AB....";
        let p = Payload::piped(&mut buf, 2, r.as_fd());
        // MemDevice cannot splice: the first run reads the pipe into memory.
        p.write_run(&dev, 10, 0..3).unwrap();
        p.write_run(&dev, 20, 3..6).unwrap();
        let img = dev.snapshot();
        assert_eq!(&img[10..13], b"ABC");
        assert_eq!(&img[20..23], b"DEF");
        let m = Payload::mem(b"xyz");
        m.write_run(&dev, 0, 1..3).unwrap();
        assert_eq!(&dev.snapshot()[..2], b"yz");
    }
}
