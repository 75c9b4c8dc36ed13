//! Attaching the kernel nbd client to our NBD server over generic netlink.
//!
//! The caller does the NBD handshake on each socket first (the kernel only does transmission),
//! then hands the connected sockets (socketpair ends or TCP) to [`NbdClient::connect`]; after
//! a daemon restart, [`NbdClient::reconfigure`] gives the kernel new sockets for the same
//! device while I/O waits up to the dead-connection timeout. With netlink the kernel holds its
//! own references: the caller may close its copies afterwards.

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::netlink::codec::get_family;
use crate::netlink::codec::parse_family_id;
use crate::netlink::nbd::{self, Connect};
use crate::netlink::{Netlink, NetlinkError, NlSocket};

/// The "nbd" generic netlink family, resolved.
pub struct NbdClient<N: Netlink> {
    nl: N,
    family: u16,
}

impl NbdClient<NlSocket> {
    /// Opens a generic netlink socket and resolves the family (the `nbd` module must be loaded).
    pub fn open() -> Result<Self, NetlinkError> {
        Self::new(NlSocket::generic()?)
    }
}

impl<N: Netlink> NbdClient<N> {
    pub fn new(mut nl: N) -> Result<Self, NetlinkError> {
        let seq = nl.next_seq();
        let replies = nl.request("resolve family nbd", &get_family(seq, nbd::FAMILY))?;
        let family = replies.iter().find_map(|(_, p)| parse_family_id(p)).ok_or_else(|| {
            NetlinkError::Protocol {
                what: "resolve family nbd",
                detail: "no CTRL_ATTR_FAMILY_ID".into(),
            }
        })?;
        Ok(Self { nl, family })
    }

    pub fn family(&self) -> u16 {
        self.family
    }

    /// NBD_CMD_CONNECT; returns the device index N of `/dev/nbdN`.
    pub fn connect(&mut self, c: &Connect, socks: &[BorrowedFd<'_>]) -> Result<u32, NetlinkError> {
        let fds: Vec<i32> = socks.iter().map(|s| s.as_raw_fd()).collect();
        let seq = self.nl.next_seq();
        let replies = self.nl.request("nbd connect", &nbd::connect(self.family, seq, c, &fds))?;
        replies.iter().find_map(|(_, p)| nbd::parse_connect_reply(p)).or(c.index).ok_or_else(|| {
            NetlinkError::Protocol {
                what: "nbd connect",
                detail: "reply lacks NBD_ATTR_INDEX".into(),
            }
        })
    }

    /// NBD_CMD_RECONFIGURE: replaces the dead sockets of device `index`.
    pub fn reconfigure(
        &mut self,
        index: u32,
        backend: Option<&str>,
        dead_conn_timeout_secs: u64,
        socks: &[BorrowedFd<'_>],
    ) -> Result<(), NetlinkError> {
        let fds: Vec<i32> = socks.iter().map(|s| s.as_raw_fd()).collect();
        let seq = self.nl.next_seq();
        let msg = nbd::reconfigure(self.family, seq, index, backend, dead_conn_timeout_secs, &fds);
        self.nl.request("nbd reconfigure", &msg).map(drop)
    }

    /// NBD_CMD_DISCONNECT: the kernel sends NBD_CMD_DISC on every socket and shuts them down.
    pub fn disconnect(&mut self, index: u32) -> Result<(), NetlinkError> {
        let seq = self.nl.next_seq();
        self.nl.request("nbd disconnect", &nbd::disconnect(self.family, seq, index)).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::netlink::codec::{attrs, genl_header, parse_msgs, MsgBuilder};
    use crate::netlink::socket::{FakeNetlink, Replies};

    fn family_reply(id: u16) -> Replies {
        let m = MsgBuilder::new(0x10, 0, 1)
            .header(&genl_header(1, 2))
            .attr(1, &id.to_ne_bytes())
            .finish();
        vec![(0x10, m[16..].to_vec())]
    }

    fn connect_params() -> Connect {
        Connect {
            index: None,
            size_bytes: 1 << 30,
            block_size: 4096,
            server_flags: 1,
            timeout_secs: 30,
            dead_conn_timeout_secs: 60,
            client_flags: 0,
            backend: None,
        }
    }

    #[test]
    fn connect_resolves_family_and_returns_index() {
        let reply = MsgBuilder::new(0x22, 0, 2).header(&genl_header(1, 1)).attr_u32(1, 3).finish();
        let fake =
            FakeNetlink::new(vec![Ok(family_reply(0x22)), Ok(vec![(0x22, reply[16..].to_vec())])]);
        let mut c = NbdClient::new(fake).unwrap();
        assert_eq!(c.family(), 0x22);
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(c.connect(&connect_params(), &[a.as_fd()]).unwrap(), 3);
        let sent = parse_msgs(&c.nl.sent[1]).unwrap()[0].ty;
        assert_eq!(sent, 0x22);
        // The socket fd number travels in SOCKETS/ITEM/FD.
        let p = c.nl.sent[1].clone();
        let payload = parse_msgs(&p).unwrap()[0].payload;
        let socks = attrs(&payload[4..]).find(|(t, _)| *t == 7).unwrap().1;
        let item = attrs(socks).next().unwrap().1;
        let fd = attrs(item).next().unwrap().1;
        assert_eq!(u32::from_ne_bytes(fd.try_into().unwrap()) as i32, a.as_raw_fd());
    }

    #[test]
    fn kernel_errors_surface_with_errno() {
        let fake = FakeNetlink::new(vec![Ok(family_reply(0x22)), Err(libc_einval())]);
        let mut c = NbdClient::new(fake).unwrap();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = c.connect(&connect_params(), &[a.as_fd()]).unwrap_err();
        assert_eq!(e.errno(), Some(22));
        assert!(c.disconnect(0).is_ok());
        assert!(c.reconfigure(0, Some("x"), 10, &[a.as_fd()]).is_ok());
    }

    #[test]
    fn missing_family_is_a_protocol_error() {
        assert!(matches!(
            NbdClient::new(FakeNetlink::new(vec![Ok(vec![])])),
            Err(NetlinkError::Protocol { .. })
        ));
    }

    fn libc_einval() -> i32 {
        22
    }
}
