//! The netlink socket seam: [`Netlink`] is what the bring-up code talks to; [`NlSocket`] is the
//! kernel, a scripted fake stands in for it in tests.

use std::os::fd::OwnedFd;

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

use super::codec::{error_code, parse_msgs, CodecError, NLMSG_DONE, NLMSG_ERROR};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink {what}")]
    Io { what: &'static str, source: std::io::Error },
    #[error("netlink {what}: kernel answered errno {errno} ({})", std::io::Error::from_raw_os_error(*errno))]
    Kernel { what: &'static str, errno: i32 },
    #[error("netlink {what}")]
    Codec { what: &'static str, source: CodecError },
    #[error("netlink {what}: unexpected reply ({detail})")]
    Protocol { what: &'static str, detail: String },
}

impl NetlinkError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// The payload-carrying replies to one request: (message type, payload).
pub type Replies = Vec<(u16, Vec<u8>)>;

/// One request/response exchange with the kernel.
pub trait Netlink {
    /// A fresh sequence number for the next request.
    fn next_seq(&mut self) -> u32;
    /// Sends `msg` (which asked for an ACK) and returns the payload-carrying replies (type and
    /// payload) received before the ACK; a negative ACK is [`NetlinkError::Kernel`].
    fn request(&mut self, what: &'static str, msg: &[u8]) -> Result<Replies, NetlinkError>;
}

/// A real netlink socket (NETLINK_ROUTE or NETLINK_GENERIC).
pub struct NlSocket {
    fd: OwnedFd,
    seq: u32,
}

impl NlSocket {
    pub fn route() -> Result<Self, NetlinkError> {
        Self::open(None)
    }

    pub fn generic() -> Result<Self, NetlinkError> {
        Self::open(Some(netlink::GENERIC))
    }

    fn open(proto: Option<rustix::net::Protocol>) -> Result<Self, NetlinkError> {
        let io = |what| move |e: rustix::io::Errno| NetlinkError::Io { what, source: e.into() };
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            rustix::net::SocketFlags::CLOEXEC,
            proto,
        )
        .map_err(io("socket"))?;
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, 0)).map_err(io("bind"))?;
        Ok(Self { fd, seq: 1 })
    }
}

impl Netlink for NlSocket {
    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn request(&mut self, what: &'static str, msg: &[u8]) -> Result<Replies, NetlinkError> {
        let io = |e: rustix::io::Errno| NetlinkError::Io { what, source: e.into() };
        let seq = parse_msgs(msg)
            .map_err(|source| NetlinkError::Codec { what, source })?
            .first()
            .map(|m| m.seq)
            .unwrap_or(0);
        rustix::net::sendto(&self.fd, msg, SendFlags::empty(), &SocketAddrNetlink::new(0, 0))
            .map_err(io)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let (n, _) =
                rustix::net::recv(&self.fd, &mut buf[..], RecvFlags::empty()).map_err(io)?;
            for m in parse_msgs(&buf[..n]).map_err(|source| NetlinkError::Codec { what, source })? {
                if m.seq != seq {
                    continue; // a stale reply to an earlier request
                }
                match m.ty {
                    NLMSG_ERROR => {
                        let errno = error_code(m.payload)
                            .map_err(|source| NetlinkError::Codec { what, source })?;
                        return if errno == 0 {
                            Ok(out)
                        } else {
                            Err(NetlinkError::Kernel { what, errno })
                        };
                    }
                    NLMSG_DONE => return Ok(out),
                    ty => out.push((ty, m.payload.to_vec())),
                }
            }
        }
    }
}

/// One scripted answer: the replies before the ACK, or a negative ACK's errno.
#[cfg(test)]
pub type Scripted = Result<Replies, i32>;

/// A scripted stand-in for tests: records requests, answers from a queue.
#[cfg(test)]
pub struct FakeNetlink {
    pub sent: Vec<Vec<u8>>,
    pub replies: std::collections::VecDeque<Scripted>,
    seq: u32,
}

#[cfg(test)]
impl FakeNetlink {
    pub fn new(replies: Vec<Scripted>) -> Self {
        Self { sent: Vec::new(), replies: replies.into(), seq: 0 }
    }
}

#[cfg(test)]
impl Netlink for FakeNetlink {
    fn next_seq(&mut self) -> u32 {
        self.seq += 1;
        self.seq
    }

    fn request(&mut self, what: &'static str, msg: &[u8]) -> Result<Replies, NetlinkError> {
        self.sent.push(msg.to_vec());
        match self.replies.pop_front() {
            Some(Ok(r)) => Ok(r),
            Some(Err(errno)) => Err(NetlinkError::Kernel { what, errno }),
            None => Ok(Vec::new()),
        }
    }
}
