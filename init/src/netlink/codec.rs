//! Pure netlink message codec: the framing, attributes, and the few rtnetlink / generic
//! netlink messages PID 1 sends. No I/O here; [`super::socket`] does the sending.
//!
//! ```text
//! nlmsghdr (16)  len u32 | type u16 | flags u16 | seq u32 | port u32
//! payload        family header (ifinfomsg 16 / ifaddrmsg 8 / rtmsg 12 / genlmsghdr 4)
//!                attributes: len u16 (header + payload, unpadded) | type u16 | payload, padded to 4
//! ```
//! All integers are host byte order (x86_64: little endian), except that IPv4 addresses are
//! the four address bytes as written.

use std::net::Ipv4Addr;

pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_NEWROUTE: u16 = 24;
const AF_INET: u8 = 2;
const IFF_UP: u32 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RTN_UNICAST: u8 = 1;

pub const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds one netlink message.
#[derive(Debug, Clone)]
pub struct MsgBuilder {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl MsgBuilder {
    pub fn new(ty: u16, flags: u16, seq: u32) -> Self {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        Self { buf, nests: Vec::new() }
    }

    /// Appends a fixed family header (already padded to 4 by every family we use).
    pub fn header(mut self, bytes: &[u8]) -> Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    pub fn attr(mut self, ty: u16, payload: &[u8]) -> Self {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    pub fn attr_u32(self, ty: u16, v: u32) -> Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    pub fn attr_u64(self, ty: u16, v: u64) -> Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// NUL-terminated string attribute.
    pub fn attr_str(self, ty: u16, s: &str) -> Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(ty, &v)
    }

    pub fn begin_nested(mut self, ty: u16) -> Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    pub fn end_nested(mut self) -> Self {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        while !self.nests.is_empty() {
            self = self.end_nested();
        }
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// A decoded message (borrowing the receive buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("netlink: truncated {what} at offset {offset}")]
    Truncated { what: &'static str, offset: usize },
}

/// Splits a receive buffer into messages.
pub fn parse_msgs(mut buf: &[u8]) -> Result<Vec<Msg<'_>>, CodecError> {
    let mut out = Vec::new();
    let mut off = 0;
    while !buf.is_empty() {
        let h = buf
            .get(..NLMSG_HDRLEN)
            .ok_or(CodecError::Truncated { what: "nlmsghdr", offset: off })?;
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(CodecError::Truncated { what: "message", offset: off });
        }
        out.push(Msg {
            ty: u16::from_ne_bytes([h[4], h[5]]),
            flags: u16::from_ne_bytes([h[6], h[7]]),
            seq: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
            payload: &buf[NLMSG_HDRLEN..len],
        });
        let step = align4(len).min(buf.len());
        buf = &buf[step..];
        off += step;
    }
    Ok(out)
}

/// The errno of an NLMSG_ERROR payload (0 = ACK).
pub fn error_code(payload: &[u8]) -> Result<i32, CodecError> {
    let b = payload.get(..4).ok_or(CodecError::Truncated { what: "nlmsgerr", offset: 0 })?;
    Ok(-i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// Iterates attributes: (type without flags, payload). Stops at the first malformed one.
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let h = buf.get(..4)?;
        let len = u16::from_ne_bytes([h[0], h[1]]) as usize;
        let ty = u16::from_ne_bytes([h[2], h[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            buf = &[];
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((ty, payload))
    })
}

pub fn attr_u32(payload: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(payload.get(..4)?.try_into().ok()?))
}

pub fn attr_u16(payload: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(payload.get(..2)?.try_into().ok()?))
}

// ---- rtnetlink ----

/// RTM_NEWLINK setting IFF_UP on interface `index`.
pub fn link_up(seq: u32, index: u32) -> Vec<u8> {
    let mut ifi = [0u8; 16];
    ifi[4..8].copy_from_slice(&index.to_ne_bytes());
    ifi[8..12].copy_from_slice(&IFF_UP.to_ne_bytes());
    ifi[12..16].copy_from_slice(&IFF_UP.to_ne_bytes());
    MsgBuilder::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq).header(&ifi).finish()
}

/// RTM_NEWADDR adding `addr/prefix` to interface `index` (replacing an equal one).
pub fn add_ipv4(seq: u32, index: u32, addr: Ipv4Addr, prefix: u8) -> Vec<u8> {
    let mut ifa = [0u8; 8];
    ifa[0] = AF_INET;
    ifa[1] = prefix;
    ifa[4..8].copy_from_slice(&index.to_ne_bytes());
    MsgBuilder::new(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, seq)
        .header(&ifa)
        .attr(IFA_LOCAL, &addr.octets())
        .attr(IFA_ADDRESS, &addr.octets())
        .finish()
}

/// RTM_NEWROUTE: default route via `gateway` out of interface `index`.
pub fn default_route(seq: u32, index: u32, gateway: Ipv4Addr) -> Vec<u8> {
    let rtm = [AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, 0, RTN_UNICAST, 0, 0, 0, 0];
    MsgBuilder::new(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, seq)
        .header(&rtm)
        .attr(RTA_GATEWAY, &gateway.octets())
        .attr_u32(RTA_OIF, index)
        .finish()
}

// ---- generic netlink ----

/// genlmsghdr: cmd, version, reserved.
pub fn genl_header(cmd: u8, version: u8) -> [u8; 4] {
    [cmd, version, 0, 0]
}

/// CTRL_CMD_GETFAMILY for `name`.
pub fn get_family(seq: u32, name: &str) -> Vec<u8> {
    MsgBuilder::new(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, seq)
        .header(&genl_header(CTRL_CMD_GETFAMILY, 1))
        .attr_str(CTRL_ATTR_FAMILY_NAME, name)
        .finish()
}

/// The family id in a CTRL_CMD_NEWFAMILY reply payload (after the genl header).
pub fn parse_family_id(payload: &[u8]) -> Option<u16> {
    attrs(payload.get(4..)?).find(|(t, _)| *t == CTRL_ATTR_FAMILY_ID).and_then(|(_, p)| attr_u16(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rt_message_with_nested_attrs() {
        let m = MsgBuilder::new(42, NLM_F_REQUEST, 7)
            .header(&[1, 2, 3, 4])
            .attr_u32(1, 0xdead_beef)
            .attr_str(2, "nbd")
            .begin_nested(7)
            .begin_nested(1)
            .attr_u32(1, 5)
            .end_nested()
            .end_nested()
            .finish();
        assert_eq!(m.len() % 4, 0);
        let msgs = parse_msgs(&m).unwrap();
        assert_eq!(msgs.len(), 1);
        let msg = msgs[0];
        assert_eq!((msg.ty, msg.flags, msg.seq), (42, NLM_F_REQUEST, 7));
        assert_eq!(&msg.payload[..4], &[1, 2, 3, 4]);
        let a: Vec<_> = attrs(&msg.payload[4..]).collect();
        assert_eq!(a.len(), 3);
        assert_eq!(attr_u32(a[0].1), Some(0xdead_beef));
        assert_eq!(a[1], (2, b"nbd\0".as_slice()));
        assert_eq!(a[2].0, 7);
        let (t, item) = attrs(a[2].1).next().unwrap();
        assert_eq!(t, 1);
        assert_eq!(attrs(item).next().map(|(t, p)| (t, attr_u32(p))), Some((1, Some(5))));
    }

    #[test]
    fn link_addr_route_layouts() {
        let m = link_up(1, 2);
        assert_eq!(m.len(), 32);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWLINK);
        assert_eq!(&m[20..24], &2u32.to_ne_bytes());
        assert_eq!(&m[24..28], &1u32.to_ne_bytes());
        let a = add_ipv4(2, 2, Ipv4Addr::new(10, 0, 2, 15), 24);
        let p = parse_msgs(&a).unwrap()[0].payload;
        assert_eq!((p[0], p[1]), (AF_INET, 24));
        let at: Vec<_> = attrs(&p[8..]).collect();
        assert_eq!(
            at,
            [(IFA_LOCAL, [10u8, 0, 2, 15].as_slice()), (IFA_ADDRESS, [10u8, 0, 2, 15].as_slice())]
        );
        let r = default_route(3, 2, Ipv4Addr::new(10, 0, 2, 2));
        let p = parse_msgs(&r).unwrap()[0].payload;
        assert_eq!(p[4], RT_TABLE_MAIN);
        let at: Vec<_> = attrs(&p[12..]).collect();
        assert_eq!(at[0], (RTA_GATEWAY, [10u8, 0, 2, 2].as_slice()));
        assert_eq!(attr_u32(at[1].1), Some(2));
    }

    #[test]
    fn rt_family_request_and_reply() {
        let req = get_family(9, "nbd");
        let p = parse_msgs(&req).unwrap()[0].payload;
        assert_eq!(p[0], CTRL_CMD_GETFAMILY);
        assert_eq!(attrs(&p[4..]).next(), Some((CTRL_ATTR_FAMILY_NAME, b"nbd\0".as_slice())));
        let reply = MsgBuilder::new(GENL_ID_CTRL, 0, 9)
            .header(&genl_header(1, 2))
            .attr_str(CTRL_ATTR_FAMILY_NAME, "nbd")
            .attr(CTRL_ATTR_FAMILY_ID, &0x1du16.to_ne_bytes())
            .finish();
        assert_eq!(parse_family_id(parse_msgs(&reply).unwrap()[0].payload), Some(0x1d));
    }

    #[test]
    fn errors_and_truncation() {
        let mut ack = MsgBuilder::new(NLMSG_ERROR, 0, 1).header(&(-17i32).to_ne_bytes()).finish();
        assert_eq!(error_code(parse_msgs(&ack).unwrap()[0].payload), Ok(17));
        ack.truncate(10);
        assert_eq!(parse_msgs(&ack), Err(CodecError::Truncated { what: "nlmsghdr", offset: 0 }));
        assert_eq!(error_code(&[1]), Err(CodecError::Truncated { what: "nlmsgerr", offset: 0 }));
        assert_eq!(attrs(&[8, 0, 1, 0, 1]).count(), 0);
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse_msgs(&bytes);
            let _ = attrs(&bytes).count();
            let _ = parse_family_id(&bytes);
        }
    }
}
