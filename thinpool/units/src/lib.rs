//! Byte sizes, as every lamina binary reads and prints them.
//!
//! One grammar for every size a user types (`thinpool init --data-size`, `dm.basesize=`,
//! `lamina.opt.dm.basesize=`, `lamina vm run --disk`, `layerstore create --size`): Docker's
//! `units.RAMInBytes`, which dm.* options are parsed with, so a size that works in a Docker
//! `daemon.json` works here too. A number with an optional decimal fraction, an optional
//! space, then an optional unit `k m g t p e` (any case), optionally followed by `i` and/or `b`.
//! Every unit is binary (`10G` = `10GB` = `10GiB` = 10 × 2^30 bytes), as in Docker and LVM.
//! A fraction must come out as whole bytes (`1.5G` is fine, `1.1` is not).
//!
//! Also the one error shape every library's error type takes ([`error_type!`]).
//!
//! Sizes print two ways: lvs-style binary (`64.00m`) and Docker's decimal `HumanSize`
//! (`65.54kB`), as `docker info` prints its devicemapper fields.

mod error;
pub use error::chain;

use std::fmt;
use std::ops::{Add, AddAssign, Div, Mul, Sub, SubAssign};
use std::str::FromStr;

/// Why a size did not parse; each variant keeps the text as it was typed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("empty size")]
    Empty,
    #[error("size {0:?}: unknown unit {1:?} (use bytes or K, M, G, T, P, E; binary units)")]
    Suffix(String, String),
    #[error("size {0:?} is not a number")]
    Number(String),
    #[error("size {0:?} is too large")]
    Overflow(String),
    #[error("size {0:?} is not a whole number of bytes")]
    Fraction(String),
}

/// Parses a size in the grammar above into bytes.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(SizeError::Empty);
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let unit = suffix.strip_prefix(' ').unwrap_or(suffix).to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').filter(|u| !u.is_empty()).unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        "e" => 60,
        _ => return Err(SizeError::Suffix(s.to_owned(), suffix.to_owned())),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(SizeError::Number(s.to_owned()));
    }
    let overflow = || SizeError::Overflow(s.to_owned());
    let int: u64 = if int.is_empty() { 0 } else { int.parse().map_err(|_| overflow())? };
    let mut bytes = int.checked_mul(1 << shift).ok_or_else(overflow)?;
    if !frac.is_empty() {
        // The fraction of the unit, frac / 10^len * 2^shift, must be whole bytes.
        if frac.len() > 12 {
            return Err(SizeError::Fraction(s.to_owned()));
        }
        let f: u128 = frac.parse().map_err(|_| SizeError::Number(s.to_owned()))?;
        let scaled = f << shift;
        let den = 10u128.pow(frac.len() as u32);
        if !scaled.is_multiple_of(den) {
            return Err(SizeError::Fraction(s.to_owned()));
        }
        let extra = u64::try_from(scaled / den).map_err(|_| overflow())?;
        bytes = bytes.checked_add(extra).ok_or_else(overflow)?;
    }
    Ok(bytes)
}

/// lvs-style size: binary units, two decimals, lower-case unit (`64.00m`, `1.50g`).
pub fn binary_size(bytes: u64) -> String {
    const UNITS: [(&str, u32); 5] = [("p", 50), ("t", 40), ("g", 30), ("m", 20), ("k", 10)];
    for (unit, shift) in UNITS {
        if bytes >= 1 << shift {
            return format!("{:.2}{unit}", bytes as f64 / (1u64 << shift) as f64);
        }
    }
    format!("{bytes}b")
}

/// Docker's `units.HumanSize`: decimal units, four significant digits (`65.54kB`, `10.74GB`),
/// as `docker info` prints sizes.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    format!("{}{}", g4(v), UNITS[i])
}

/// C's `%.4g` for 0 <= v < 10000: four significant digits, trailing zeros dropped.
fn g4(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let digits = v.abs().log10().floor() as i32 + 1;
    let decimals = (4 - digits).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// A number of bytes. Arithmetic panics on overflow in debug builds like `u64`'s; the
/// `checked_*` forms are for sizes that come from outside.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Bytes(u64);

impl Bytes {
    pub const ZERO: Bytes = Bytes(0);
    pub const KIB: Bytes = Bytes(1 << 10);
    pub const MIB: Bytes = Bytes(1 << 20);
    pub const GIB: Bytes = Bytes(1 << 30);

    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    pub fn checked_add(self, o: Bytes) -> Option<Bytes> {
        self.0.checked_add(o.0).map(Bytes)
    }

    pub fn checked_sub(self, o: Bytes) -> Option<Bytes> {
        self.0.checked_sub(o.0).map(Bytes)
    }

    pub fn checked_mul(self, n: u64) -> Option<Bytes> {
        self.0.checked_mul(n).map(Bytes)
    }

    pub fn saturating_sub(self, o: Bytes) -> Bytes {
        Bytes(self.0.saturating_sub(o.0))
    }

    /// Whole units of `unit` bytes, rounded down (blocks that fit).
    pub fn div_floor(self, unit: Bytes) -> u64 {
        self.0 / unit.0
    }

    /// Whole units of `unit` bytes, rounded up (blocks that cover).
    pub fn div_ceil(self, unit: Bytes) -> u64 {
        self.0.div_ceil(unit.0)
    }

    pub fn is_multiple_of(self, unit: Bytes) -> bool {
        self.0.is_multiple_of(unit.0)
    }

    /// lvs-style (`64.00m`).
    pub fn binary(self) -> String {
        binary_size(self.0)
    }

    /// Docker-style (`65.54kB`).
    pub fn human(self) -> String {
        human_size(self.0)
    }
}

impl fmt::Display for Bytes {
    /// The exact count, so a printed size parses back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Bytes {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, SizeError> {
        parse_size(s).map(Bytes)
    }
}

impl From<u64> for Bytes {
    fn from(n: u64) -> Self {
        Bytes(n)
    }
}

impl From<Bytes> for u64 {
    fn from(b: Bytes) -> u64 {
        b.0
    }
}

impl Add for Bytes {
    type Output = Bytes;
    fn add(self, o: Bytes) -> Bytes {
        Bytes(self.0 + o.0)
    }
}

impl AddAssign for Bytes {
    fn add_assign(&mut self, o: Bytes) {
        self.0 += o.0;
    }
}

impl Sub for Bytes {
    type Output = Bytes;
    fn sub(self, o: Bytes) -> Bytes {
        Bytes(self.0 - o.0)
    }
}

impl SubAssign for Bytes {
    fn sub_assign(&mut self, o: Bytes) {
        self.0 -= o.0;
    }
}

impl Mul<u64> for Bytes {
    type Output = Bytes;
    fn mul(self, n: u64) -> Bytes {
        Bytes(self.0 * n)
    }
}

impl Div<u64> for Bytes {
    type Output = Bytes;
    fn div(self, n: u64) -> Bytes {
        Bytes(self.0 / n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dockers_grammar() {
        for (s, want) in [
            ("4096", 4096u64),
            ("64K", 64 << 10),
            ("64k", 64 << 10),
            ("64KiB", 64 << 10),
            ("64kb", 64 << 10),
            ("8M", 8 << 20),
            ("10G", 10 << 30),
            ("10GB", 10 << 30),
            ("10GiB", 10 << 30),
            ("10 GiB", 10 << 30),
            ("2T", 2 << 40),
            ("1P", 1 << 50),
            ("1.5G", 3 << 29),
            (" 7b ", 7),
            ("0", 0),
        ] {
            assert_eq!(parse_size(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_read_exactly() {
        assert_eq!(parse_size("10X"), Err(SizeError::Suffix("10X".into(), "X".into())));
        assert!(matches!(parse_size("10KB2"), Err(SizeError::Suffix(_, _))));
        assert!(matches!(parse_size("10ib"), Err(SizeError::Suffix(_, _))));
        assert!(matches!(parse_size("10  G"), Err(SizeError::Suffix(_, _))));
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert!(matches!(parse_size("K"), Err(SizeError::Number(_))));
        assert!(matches!(parse_size("1.2.3K"), Err(SizeError::Number(_))));
        assert!(matches!(parse_size("99999999999T"), Err(SizeError::Overflow(_))));
        assert!(matches!(parse_size("18446744073709551616"), Err(SizeError::Overflow(_))));
        assert!(matches!(parse_size("1.1"), Err(SizeError::Fraction(_))));
        assert!(matches!(parse_size("-5"), Err(SizeError::Suffix(_, _))));
        assert!(parse_size("10X").unwrap_err().to_string().contains("unknown unit"));
    }

    #[test]
    fn prints_sizes_like_lvs_and_docker() {
        assert_eq!(binary_size(64 << 20), "64.00m");
        assert_eq!(binary_size(3 << 29), "1.50g");
        assert_eq!(binary_size(100), "100b");
        for (n, want) in [
            (65536, "65.54kB"),
            (10 << 30, "10.74GB"),
            (102_000_000_000, "102GB"),
            (524_288, "524.3kB"),
            (0, "0B"),
            (999, "999B"),
            (1000, "1kB"),
        ] {
            assert_eq!(human_size(n), want, "{n}");
        }
    }

    #[test]
    fn bytes_arithmetic_and_text() {
        let b: Bytes = "1.5G".parse().unwrap();
        assert_eq!(b, Bytes::GIB + Bytes::GIB / 2);
        assert_eq!(b.div_ceil(Bytes::new(1 << 29)), 3);
        assert_eq!((b - Bytes::GIB).div_floor(Bytes::MIB), 512);
        assert_eq!(Bytes::ZERO.checked_sub(Bytes::KIB), None);
        assert_eq!(b.to_string().parse::<Bytes>(), Ok(b));
        assert_eq!(serde_json::to_string(&Bytes::KIB).unwrap(), "1024");
        assert_eq!(Bytes::MIB.binary(), "1.00m");
        assert_eq!(Bytes::new(65536).human(), "65.54kB");
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,24}") {
            let _ = parse_size(&s);
        }

        #[test]
        fn rt_whole_units(n in 0u64..8192, unit in 0usize..6, i in proptest::bool::ANY, b in proptest::bool::ANY) {
            let (suffix, shift) = [("", 0), ("K", 10), ("m", 20), ("G", 30), ("t", 40), ("P", 50)][unit];
            let tail = if suffix.is_empty() { "" } else { match (i, b) { (true, true) => "iB", (true, false) => "i", (false, true) => "B", _ => "" } };
            let s = format!("{n}{suffix}{tail}");
            proptest::prop_assert_eq!(parse_size(&s), Ok(n << shift), "{}", s);
        }
    }
}
