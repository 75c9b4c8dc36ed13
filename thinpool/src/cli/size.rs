//! Byte sizes on the command line: plain bytes or a binary K/M/G/T suffix (`64K`, `1.5G`,
//! `10GiB`), and the two ways sizes are printed (lvs-style binary, Docker-style decimal).

/// Why a size did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("empty size")]
    Empty,
    #[error("size {0:?}: unknown suffix {1:?} (use bytes or K, M, G, T; binary units)")]
    Suffix(String, String),
    #[error("size {0:?} is not a number")]
    Number(String),
    #[error("size {0:?} is too large")]
    Overflow(String),
    #[error("size {0:?} is not a whole number of bytes")]
    Fraction(String),
}

/// Parses `123`, `64K`, `64k`, `64KiB`, `1.5G`, `2T` into bytes (binary units).
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(SizeError::Empty);
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(SizeError::Suffix(s.to_owned(), suffix.to_owned())),
    };
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(SizeError::Number(s.to_owned()));
    }
    let overflow = || SizeError::Overflow(s.to_owned());
    let int: u64 = if int.is_empty() { 0 } else { int.parse().map_err(|_| overflow())? };
    let mut bytes = int.checked_mul(1 << shift).ok_or_else(overflow)?;
    if !frac.is_empty() {
        // Exact decimal fraction of the unit: frac / 10^len * 2^shift must be whole.
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

pub use thinpool::units::human_size;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_bytes_and_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size(" 7b "), Ok(7));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn refuses_what_it_cannot_read_exactly() {
        assert!(matches!(parse_size("10X"), Err(SizeError::Suffix(_, _))));
        assert!(matches!(parse_size("10KB2"), Err(SizeError::Suffix(_, _))));
        assert!(matches!(parse_size("10MB"), Err(SizeError::Suffix(_, _))));
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert!(matches!(parse_size("K"), Err(SizeError::Number(_))));
        assert!(matches!(parse_size("1.2.3K"), Err(SizeError::Number(_))));
        assert!(matches!(parse_size("99999999999T"), Err(SizeError::Overflow(_))));
        assert!(matches!(parse_size("18446744073709551616"), Err(SizeError::Overflow(_))));
        assert!(matches!(parse_size("1.1"), Err(SizeError::Fraction(_))));
        assert!(matches!(parse_size("-5"), Err(SizeError::Suffix(_, _))));
        assert!(parse_size("10X").unwrap_err().to_string().contains("unknown suffix"));
    }

    #[test]
    fn prints_sizes_like_lvs_and_docker() {
        assert_eq!(binary_size(64 << 20), "64.00m");
        assert_eq!(binary_size(3 << 29), "1.50g");
        assert_eq!(binary_size(100), "100b");
        assert_eq!(human_size(65536), "65.54kB");
        assert_eq!(human_size(10 << 30), "10.74GB");
        assert_eq!(human_size(102_000_000_000), "102GB");
        assert_eq!(human_size(524_288), "524.3kB");
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,24}") {
            let _ = parse_size(&s);
        }

        #[test]
        fn rt_whole_units(n in 0u64..1_000_000, unit in 0usize..5) {
            let (suffix, shift) = [("", 0), ("K", 10), ("M", 20), ("G", 30), ("T", 40)][unit];
            proptest::prop_assert_eq!(parse_size(&format!("{n}{suffix}")), Ok(n << shift));
        }
    }
}
