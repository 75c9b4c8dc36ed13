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

/// One export's allowlist, written `NAME=CIDR[,CIDR...]` on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportAllow {
    pub export: String,
    pub allow: AllowList,
}

impl FromStr for ExportAllow {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((export, list)) = s.split_once('=').filter(|(e, _)| !e.is_empty()) else {
            return Err(CidrError { text: s.to_owned(), why: "expected EXPORT=CIDR[,CIDR...]" });
        };
        let allow = AllowList::parse(list)?;
        if allow.0.is_empty() {
            return Err(CidrError { text: s.to_owned(), why: "no address given" });
        }
        Ok(Self { export: export.to_owned(), allow })
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
    fn export_allowlists_parse() {
        let e: ExportAllow = "vol1=10.0.0.0/8,::1".parse().unwrap();
        assert_eq!(e.export, "vol1");
        assert!(e.allow.allows("10.9.9.9".parse().unwrap()));
        assert!(!e.allow.allows("11.0.0.1".parse().unwrap()));
        assert!(e.allow.allows("::1".parse().unwrap()));
        let shape = "expected EXPORT=CIDR[,CIDR...]";
        for (bad, text, why) in [
            ("vol1", "vol1", shape),
            ("=10.0.0.1", "=10.0.0.1", shape),
            ("vol1=", "vol1=", "no address given"),
            ("vol1=300.0.0.1", "300.0.0.1", "not an IP address"),
        ] {
            let want = CidrError { text: text.into(), why };
            assert_eq!(bad.parse::<ExportAllow>(), Err(want), "{bad} must be rejected");
        }
    }

    #[test]
    fn cidr_rejects_garbage() {
        for (bad, why) in [
            ("10.0.0.0/33", "prefix is longer than the address"),
            ("::/129", "prefix is longer than the address"),
            ("abc", "not an IP address"),
            ("1.2.3.4/x", "prefix is not a number"),
            ("1.2.3/8", "not an IP address"),
        ] {
            let want = CidrError { text: bad.into(), why };
            assert_eq!(AllowList::parse(bad), Err(want), "{bad} must be rejected");
        }
        assert_eq!(Cidr::from_str("::1").unwrap().to_string(), "::1/128");
    }
}
