//! Client address allowlist: IPv4 and IPv6 CIDR blocks (`10.0.0.0/8`, `::1/128`, or a bare
//! address meaning a single host). IPv4-mapped IPv6 peers (`::ffff:a.b.c.d`) match IPv4 rules.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid CIDR {text:?}: {why}")]
pub struct CidrError {
    pub text: String,
    pub why: &'static str,
}

/// One address block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                prefix_eq(&net.octets(), &a.octets(), self.prefix.into())
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                prefix_eq(&net.octets(), &a.octets(), self.prefix.into())
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: usize) -> bool {
    let full = bits / 8;
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| CidrError { text: s.to_owned(), why };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| err("not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| err("prefix is not a number"))?,
            None => max,
        };
        if prefix > max {
            return Err(err("prefix is longer than the address"));
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An allowlist; empty means everyone may connect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(pub Vec<Cidr>);

impl AllowList {
    /// Parses a comma-separated list (`"127.0.0.1,10.0.0.0/8,::1"`).
    pub fn parse(s: &str) -> Result<Self, CidrError> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Cidr::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.is_empty() || self.0.iter().any(|c| c.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let l = AllowList::parse("10.1.0.0/16, 192.168.1.7,fd00::/8").unwrap();
        assert!(l.allows("10.1.200.3".parse().unwrap()));
        assert!(!l.allows("10.2.0.1".parse().unwrap()));
        assert!(l.allows("192.168.1.7".parse().unwrap()));
        assert!(!l.allows("192.168.1.8".parse().unwrap()));
        assert!(l.allows("fd12::1".parse().unwrap()));
        assert!(!l.allows("fe80::1".parse().unwrap()));
        assert!(l.allows("::ffff:10.1.2.3".parse().unwrap()), "v4-mapped peers match v4 rules");
        assert!(AllowList::default().allows("8.8.8.8".parse().unwrap()));
        let odd = AllowList::parse("10.0.0.128/25").unwrap();
        assert!(odd.allows("10.0.0.200".parse().unwrap()));
        assert!(!odd.allows("10.0.0.127".parse().unwrap()));
        assert!(AllowList::parse("0.0.0.0/0").unwrap().allows("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn cidr_rejects_garbage() {
        for bad in ["10.0.0.0/33", "::/129", "abc", "1.2.3.4/x", "1.2.3/8"] {
            assert!(AllowList::parse(bad).is_err(), "{bad} must be rejected");
        }
        assert_eq!(Cidr::from_str("::1").unwrap().to_string(), "::1/128");
    }
}
