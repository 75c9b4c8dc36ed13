//! The kernel nbd client's generic netlink family ("nbd", version 1): pure builders for
//! CONNECT / RECONFIGURE / DISCONNECT and the CONNECT reply parser (Linux
//! include/uapi/linux/nbd-netlink.h, drivers/block/nbd.c).
//!
//! ```text
//! CONNECT      SIZE_BYTES u64 (required) BLOCK_SIZE_BYTES u64 SERVER_FLAGS u64 TIMEOUT u64
//!              DEAD_CONN_TIMEOUT u64 CLIENT_FLAGS u64 [INDEX u32] [BACKEND_IDENTIFIER str]
//!              SOCKETS { SOCK_ITEM { SOCK_FD u32 } … }        → reply carries INDEX u32
//! RECONFIGURE  INDEX u32 SOCKETS {…} [BACKEND_IDENTIFIER] [DEAD_CONN_TIMEOUT]
//! DISCONNECT   INDEX u32
//! ```

use super::codec::{attr_u32, attrs, genl_header, MsgBuilder, NLM_F_ACK, NLM_F_REQUEST};

pub const FAMILY: &str = "nbd";
const VERSION: u8 = 1;
const CMD_CONNECT: u8 = 1;
const CMD_DISCONNECT: u8 = 2;
const CMD_RECONFIGURE: u8 = 3;

const ATTR_INDEX: u16 = 1;
const ATTR_SIZE_BYTES: u16 = 2;
const ATTR_BLOCK_SIZE_BYTES: u16 = 3;
const ATTR_TIMEOUT: u16 = 4;
const ATTR_SERVER_FLAGS: u16 = 5;
const ATTR_CLIENT_FLAGS: u16 = 6;
const ATTR_SOCKETS: u16 = 7;
const ATTR_DEAD_CONN_TIMEOUT: u16 = 8;
const ATTR_BACKEND_IDENTIFIER: u16 = 10;
const SOCK_ITEM: u16 = 1;
const SOCK_FD: u16 = 1;

/// `NBD_CFLAG_DESTROY_ON_DISCONNECT`: remove the device when it disconnects.
pub const CFLAG_DESTROY_ON_DISCONNECT: u64 = 1;
/// `NBD_CFLAG_DISCONNECT_ON_CLOSE`: disconnect when the last opener closes the device.
pub const CFLAG_DISCONNECT_ON_CLOSE: u64 = 2;

/// Parameters of an attach; the sockets are passed separately as fd numbers of this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Device index (`/dev/nbdN`); `None` lets the kernel pick a free one.
    pub index: Option<u32>,
    pub size_bytes: u64,
    /// Power of two, 512..=4096.
    pub block_size: u64,
    /// Transmission flags from the handshake (NBD_FLAG_HAS_FLAGS | SEND_FLUSH | …).
    pub server_flags: u64,
    /// Per-request timeout in seconds (0: the block layer's 30 s re-arming timer).
    pub timeout_secs: u64,
    /// How long I/O waits for a RECONFIGURE after the connection dies.
    pub dead_conn_timeout_secs: u64,
    pub client_flags: u64,
    /// Shown in /sys/block/nbdN/backend; RECONFIGURE must repeat it.
    pub backend: Option<String>,
}

fn sockets(mut b: MsgBuilder, fds: &[i32]) -> MsgBuilder {
    b = b.begin_nested(ATTR_SOCKETS);
    for fd in fds {
        b = b.begin_nested(SOCK_ITEM).attr_u32(SOCK_FD, *fd as u32).end_nested();
    }
    b.end_nested()
}

/// NBD_CMD_CONNECT.
pub fn connect(family: u16, seq: u32, c: &Connect, fds: &[i32]) -> Vec<u8> {
    let mut b = MsgBuilder::new(family, NLM_F_REQUEST | NLM_F_ACK, seq)
        .header(&genl_header(CMD_CONNECT, VERSION));
    if let Some(i) = c.index {
        b = b.attr_u32(ATTR_INDEX, i);
    }
    b = b
        .attr_u64(ATTR_SIZE_BYTES, c.size_bytes)
        .attr_u64(ATTR_BLOCK_SIZE_BYTES, c.block_size)
        .attr_u64(ATTR_SERVER_FLAGS, c.server_flags)
        .attr_u64(ATTR_TIMEOUT, c.timeout_secs)
        .attr_u64(ATTR_DEAD_CONN_TIMEOUT, c.dead_conn_timeout_secs)
        .attr_u64(ATTR_CLIENT_FLAGS, c.client_flags);
    if let Some(id) = &c.backend {
        b = b.attr_str(ATTR_BACKEND_IDENTIFIER, id);
    }
    sockets(b, fds).finish()
}

/// NBD_CMD_RECONFIGURE: hand new sockets to device `index` (after the daemon restarted).
pub fn reconfigure(
    family: u16,
    seq: u32,
    index: u32,
    backend: Option<&str>,
    dead_conn_timeout_secs: u64,
    fds: &[i32],
) -> Vec<u8> {
    let mut b = MsgBuilder::new(family, NLM_F_REQUEST | NLM_F_ACK, seq)
        .header(&genl_header(CMD_RECONFIGURE, VERSION))
        .attr_u32(ATTR_INDEX, index)
        .attr_u64(ATTR_DEAD_CONN_TIMEOUT, dead_conn_timeout_secs);
    if let Some(id) = backend {
        b = b.attr_str(ATTR_BACKEND_IDENTIFIER, id);
    }
    sockets(b, fds).finish()
}

/// NBD_CMD_DISCONNECT.
pub fn disconnect(family: u16, seq: u32, index: u32) -> Vec<u8> {
    MsgBuilder::new(family, NLM_F_REQUEST | NLM_F_ACK, seq)
        .header(&genl_header(CMD_DISCONNECT, VERSION))
        .attr_u32(ATTR_INDEX, index)
        .finish()
}

/// The device index in a CONNECT reply payload (genl header + attributes).
pub fn parse_connect_reply(payload: &[u8]) -> Option<u32> {
    attrs(payload.get(4..)?).find(|(t, _)| *t == ATTR_INDEX).and_then(|(_, p)| attr_u32(p))
}

#[cfg(test)]
mod tests {
    use super::super::codec::{attr_u16, parse_msgs};
    use super::*;

    fn sample() -> Connect {
        Connect {
            index: None,
            size_bytes: 8 << 30,
            block_size: 4096,
            server_flags: 0b1_0000_1101,
            timeout_secs: 60,
            dead_conn_timeout_secs: 120,
            client_flags: CFLAG_DESTROY_ON_DISCONNECT,
            backend: Some("lamina-pool".into()),
        }
    }

    fn u64_of(p: &[u8]) -> u64 {
        u64::from_ne_bytes(p.try_into().unwrap())
    }

    #[test]
    fn rt_connect() {
        let m = connect(0x1d, 5, &sample(), &[7, 9]);
        let msg = parse_msgs(&m).unwrap()[0];
        assert_eq!((msg.ty, msg.seq), (0x1d, 5));
        assert_eq!(&msg.payload[..2], &[CMD_CONNECT, VERSION]);
        let a: Vec<_> = attrs(&msg.payload[4..]).collect();
        let get = |t| a.iter().find(|(ty, _)| *ty == t).map(|(_, p)| *p).unwrap();
        assert!(a.iter().all(|(t, _)| *t != ATTR_INDEX));
        assert_eq!(u64_of(get(ATTR_SIZE_BYTES)), 8 << 30);
        assert_eq!(u64_of(get(ATTR_BLOCK_SIZE_BYTES)), 4096);
        assert_eq!(u64_of(get(ATTR_SERVER_FLAGS)), 0b1_0000_1101);
        assert_eq!(u64_of(get(ATTR_TIMEOUT)), 60);
        assert_eq!(u64_of(get(ATTR_DEAD_CONN_TIMEOUT)), 120);
        assert_eq!(u64_of(get(ATTR_CLIENT_FLAGS)), 1);
        assert_eq!(get(ATTR_BACKEND_IDENTIFIER), b"lamina-pool\0");
        let fds: Vec<u32> = attrs(get(ATTR_SOCKETS))
            .map(|(t, item)| {
                assert_eq!(t, SOCK_ITEM);
                let (ft, fd) = attrs(item).next().unwrap();
                assert_eq!(ft, SOCK_FD);
                attr_u32(fd).unwrap()
            })
            .collect();
        assert_eq!(fds, [7, 9]);
    }

    #[test]
    fn rt_connect_with_index_and_reply() {
        let c = Connect { index: Some(1), backend: None, ..sample() };
        let m = connect(0x1d, 1, &c, &[3]);
        let p = parse_msgs(&m).unwrap()[0].payload;
        assert_eq!(parse_connect_reply(p), Some(1));
        assert!(attrs(&p[4..]).all(|(t, _)| t != ATTR_BACKEND_IDENTIFIER));
        assert_eq!(parse_connect_reply(&[1, 1, 0, 0]), None);
    }

    #[test]
    fn rt_reconfigure_and_disconnect() {
        let m = reconfigure(0x1d, 2, 0, Some("lamina-pool"), 120, &[11]);
        let p = parse_msgs(&m).unwrap()[0].payload;
        assert_eq!(p[0], CMD_RECONFIGURE);
        assert_eq!(parse_connect_reply(p), Some(0));
        let a: Vec<_> = attrs(&p[4..]).map(|(t, _)| t).collect();
        assert_eq!(a, [ATTR_INDEX, ATTR_DEAD_CONN_TIMEOUT, ATTR_BACKEND_IDENTIFIER, ATTR_SOCKETS]);
        let d = disconnect(0x1d, 3, 4);
        let p = parse_msgs(&d).unwrap()[0].payload;
        assert_eq!(p[0], CMD_DISCONNECT);
        assert_eq!(parse_connect_reply(p), Some(4));
        assert_eq!(attr_u16(&[1]), None);
    }
}
