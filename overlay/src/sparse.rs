//! GNU tar's PAX sparse-file formats (a pure codec: no I/O).
//!
//! GNU tar (`--sparse --format=posix`) stores a sparse file as an ordinary regular entry whose
//! PAX records describe the holes; a reader that ignores them unpacks the raw form
//! (`GNUSparseFile.NNN/name`, holding the map). Three versions exist (GNU tar manual,
//! "Storing Sparse Files"; Go's `archive/tar` reads all three, and Docker imports with it):
//!
//! ```text
//! 0.0  records: GNU.sparse.size=<real size>, then repeated
//!               GNU.sparse.offset=<o> GNU.sparse.numbytes=<n> pairs, in order
//! 0.1  records: GNU.sparse.size, GNU.sparse.map=<o>,<n>,<o>,<n>,...  GNU.sparse.name
//! 1.0  records: GNU.sparse.major=1 GNU.sparse.minor=0 GNU.sparse.name GNU.sparse.realsize
//!      data:    "<count>\n" then "<offset>\n<numbytes>\n" per chunk, in decimal, padded with
//!               NULs to a 512-byte boundary, followed by the chunks' bytes back to back
//! ```
//!
//! The entry's data (after the 1.0 map) is the concatenation of the chunks; everything else
//! of the real file, up to its real size, is a hole.

/// One stretch of real data in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub len: u64,
}

/// Where the sparse map of an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapSource {
    /// Already known from the PAX records (versions 0.0 and 0.1).
    Records(Vec<Chunk>),
    /// At the start of the entry's data (version 1.0); see [`decode_map_1_0`].
    Data,
}

/// A sparse entry described by its PAX records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaxSparse {
    /// The file's real name (`GNU.sparse.name`), when given.
    pub name: Option<Vec<u8>>,
    /// The file's real size.
    pub real_size: u64,
    pub map: MapSource,
}

/// Why a sparse description is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SparseError {
    #[error("unsupported GNU sparse format version {major}.{minor}")]
    Version { major: String, minor: String },
    #[error("bad GNU sparse record {key}: {value:?}")]
    Record { key: &'static str, value: String },
    #[error("GNU sparse file without its real size")]
    NoSize,
    #[error("sparse map: {0}")]
    Map(&'static str),
    #[error("sparse map larger than {MAX_MAP_BYTES} bytes")]
    MapTooLarge,
}

/// Largest 1.0 map accepted (Go's `archive/tar` bounds it the same way).
pub const MAX_MAP_BYTES: usize = 1 << 20;

fn num(key: &'static str, v: &[u8]) -> Result<u64, SparseError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| SparseError::Record { key, value: String::from_utf8_lossy(v).into_owned() })
}

/// Read the sparse description from an entry's PAX records (in archive order); `None` when
/// the entry is not a PAX sparse file.
pub fn from_pax(records: &[(Vec<u8>, Vec<u8>)]) -> Result<Option<PaxSparse>, SparseError> {
    let get = |k: &[u8]| records.iter().rev().find(|(rk, _)| rk == k).map(|(_, v)| v.as_slice());
    let major = get(b"GNU.sparse.major");
    let minor = get(b"GNU.sparse.minor");
    let map_rec = get(b"GNU.sparse.map");
    let has_offsets = records.iter().any(|(k, _)| k == b"GNU.sparse.offset");
    let v1 = match (major, minor) {
        (Some(b"1"), Some(b"0")) => true,
        (Some(b"0"), Some(b"0" | b"1")) => false,
        (None, None) if map_rec.is_some() || has_offsets => false,
        (None, None) => return Ok(None),
        (ma, mi) => {
            let s = |v: Option<&[u8]>| String::from_utf8_lossy(v.unwrap_or(b"")).into_owned();
            return Err(SparseError::Version { major: s(ma), minor: s(mi) });
        }
    };
    let size = get(b"GNU.sparse.size").or_else(|| get(b"GNU.sparse.realsize"));
    let real_size = num("GNU.sparse.realsize", size.ok_or(SparseError::NoSize)?)?;
    let name = get(b"GNU.sparse.name").filter(|n| !n.is_empty()).map(<[u8]>::to_vec);
    let map = if v1 {
        MapSource::Data
    } else if let Some(m) = map_rec {
        MapSource::Records(parse_map_0_1(m)?)
    } else {
        // 0.0: offset/numbytes pairs in record order.
        let mut chunks = Vec::new();
        let mut pending = None;
        for (k, v) in records {
            match k.as_slice() {
                b"GNU.sparse.offset" if pending.is_none() => {
                    pending = Some(num("GNU.sparse.offset", v)?)
                }
                b"GNU.sparse.numbytes" => match pending.take() {
                    Some(offset) => {
                        chunks.push(Chunk { offset, len: num("GNU.sparse.numbytes", v)? })
                    }
                    None => return Err(SparseError::Map("numbytes without an offset")),
                },
                b"GNU.sparse.offset" => return Err(SparseError::Map("offset without numbytes")),
                _ => {}
            }
        }
        if pending.is_some() {
            return Err(SparseError::Map("offset without numbytes"));
        }
        MapSource::Records(chunks)
    };
    Ok(Some(PaxSparse { name, real_size, map }))
}

/// `GNU.sparse.map` of version 0.1: comma-separated offset,numbytes pairs.
pub fn parse_map_0_1(v: &[u8]) -> Result<Vec<Chunk>, SparseError> {
    if v.is_empty() {
        return Ok(Vec::new());
    }
    let nums = v
        .split(|b| *b == b',')
        .map(|n| num("GNU.sparse.map", n))
        .collect::<Result<Vec<u64>, _>>()?;
    if nums.len() % 2 != 0 {
        return Err(SparseError::Map("odd number of values"));
    }
    Ok(nums.chunks(2).map(|p| Chunk { offset: p[0], len: p[1] }).collect())
}

/// Progress of [`decode_map_1_0`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The map continues past the bytes given: supply the next 512-byte block too.
    NeedMore,
    /// The map and how many bytes of the entry's data it takes (a multiple of 512).
    Done { chunks: Vec<Chunk>, consumed: usize },
}

/// Decode a version 1.0 map from the first bytes of an entry's data (whole 512-byte blocks).
pub fn decode_map_1_0(buf: &[u8]) -> Result<Decoded, SparseError> {
    if buf.len() > MAX_MAP_BYTES {
        return Err(SparseError::MapTooLarge);
    }
    let mut lines = Lines { buf, pos: 0 };
    let Some(count) = lines.next()? else { return Ok(Decoded::NeedMore) };
    // Each chunk takes at least four bytes ("0\n0\n"): a count beyond that is a lie.
    if count > (MAX_MAP_BYTES / 4) as u64 {
        return Err(SparseError::MapTooLarge);
    }
    let mut chunks = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let Some(offset) = lines.next()? else { return Ok(Decoded::NeedMore) };
        let Some(len) = lines.next()? else { return Ok(Decoded::NeedMore) };
        chunks.push(Chunk { offset, len });
    }
    Ok(Decoded::Done { chunks, consumed: lines.pos.div_ceil(512) * 512 })
}

struct Lines<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Lines<'_> {
    /// The next newline-terminated decimal, or `None` when the buffer ends first.
    fn next(&mut self) -> Result<Option<u64>, SparseError> {
        let rest = &self.buf[self.pos..];
        let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
            if rest.iter().any(|b| !b.is_ascii_digit()) {
                return Err(SparseError::Map("non-digit in a map line"));
            }
            return Ok(None);
        };
        let line = &rest[..nl];
        if line.is_empty() || line.len() > 20 || !line.iter().all(u8::is_ascii_digit) {
            return Err(SparseError::Map("map line is not a decimal number"));
        }
        self.pos += nl + 1;
        let v = std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(SparseError::Map("map number out of range"))?;
        Ok(Some(v))
    }
}

/// Encode a version 1.0 map (the inverse of [`decode_map_1_0`]; used by tests and fuzzing).
pub fn encode_map_1_0(chunks: &[Chunk]) -> Vec<u8> {
    let mut out = format!("{}\n", chunks.len()).into_bytes();
    for c in chunks {
        out.extend(format!("{}\n{}\n", c.offset, c.len).bytes());
    }
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// Check a map against the file's real size and the data bytes that follow it: chunks in
/// order, not overlapping, inside the file, and together exactly the data stored.
pub fn validate(chunks: &[Chunk], real_size: u64, data_len: u64) -> Result<(), SparseError> {
    let mut end = 0u64;
    let mut total = 0u64;
    for c in chunks {
        let c_end = c.offset.checked_add(c.len).ok_or(SparseError::Map("chunk end overflows"))?;
        if c.offset < end {
            return Err(SparseError::Map("chunks overlap or are out of order"));
        }
        if c_end > real_size {
            return Err(SparseError::Map("chunk beyond the real size"));
        }
        end = c_end;
        total += c.len;
    }
    if total != data_len {
        return Err(SparseError::Map("chunks do not add up to the stored data"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
        (k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn version_1_0_records() {
        let r = [
            rec("GNU.sparse.major", "1"),
            rec("GNU.sparse.minor", "0"),
            rec("GNU.sparse.name", "dir/f"),
            rec("GNU.sparse.realsize", "10485760"),
        ];
        let s = from_pax(&r).unwrap().unwrap();
        assert_eq!(s.name.as_deref(), Some(&b"dir/f"[..]));
        assert_eq!(s.real_size, 10_485_760);
        assert_eq!(s.map, MapSource::Data);
        assert_eq!(from_pax(&[rec("mtime", "1")]).unwrap(), None);
        let bad = [rec("GNU.sparse.major", "2"), rec("GNU.sparse.minor", "0")];
        assert!(matches!(from_pax(&bad), Err(SparseError::Version { .. })));
    }

    #[test]
    fn versions_0_x_records() {
        let r01 = [rec("GNU.sparse.size", "100"), rec("GNU.sparse.map", "0,10,50,5")];
        let want = vec![Chunk { offset: 0, len: 10 }, Chunk { offset: 50, len: 5 }];
        assert_eq!(from_pax(&r01).unwrap().unwrap().map, MapSource::Records(want.clone()));
        let r00 = [
            rec("GNU.sparse.size", "100"),
            rec("GNU.sparse.offset", "0"),
            rec("GNU.sparse.numbytes", "10"),
            rec("GNU.sparse.offset", "50"),
            rec("GNU.sparse.numbytes", "5"),
        ];
        assert_eq!(from_pax(&r00).unwrap().unwrap().map, MapSource::Records(want));
        let odd = [rec("GNU.sparse.size", "100"), rec("GNU.sparse.map", "1,2,3")];
        assert_eq!(from_pax(&odd).unwrap_err(), SparseError::Map("odd number of values"));
        assert_eq!(from_pax(&[rec("GNU.sparse.map", "1,2")]).unwrap_err(), SparseError::NoSize);
    }

    #[test]
    fn map_1_0_needs_whole_lines() {
        let enc = encode_map_1_0(&[Chunk { offset: 4096, len: 5 }]);
        assert_eq!(&enc[..10], b"1\n4096\n5\n\0");
        assert_eq!(decode_map_1_0(b"1\n40").unwrap(), Decoded::NeedMore);
        let not_decimal = SparseError::Map("map line is not a decimal number");
        assert_eq!(decode_map_1_0(b"1\nx\n").unwrap_err(), not_decimal);
        let non_digit = SparseError::Map("non-digit in a map line");
        assert_eq!(decode_map_1_0(b"1\n4x").unwrap_err(), non_digit);
    }

    #[test]
    fn validate_rules() {
        let c = |o, l| Chunk { offset: o, len: l };
        assert!(validate(&[c(0, 10), c(10, 5)], 20, 15).is_ok());
        let order = Err(SparseError::Map("chunks overlap or are out of order"));
        assert_eq!(validate(&[c(10, 5), c(0, 10)], 20, 15), order, "out of order");
        assert_eq!(validate(&[c(0, 10), c(5, 5)], 20, 15), order, "overlap");
        let beyond = Err(SparseError::Map("chunk beyond the real size"));
        assert_eq!(validate(&[c(15, 10)], 20, 10), beyond);
        let unreferenced = Err(SparseError::Map("chunks do not add up to the stored data"));
        assert_eq!(validate(&[c(0, 10)], 20, 11), unreferenced);
        let overflow = Err(SparseError::Map("chunk end overflows"));
        assert_eq!(validate(&[c(u64::MAX, 10)], u64::MAX, 10), overflow);
    }

    proptest::proptest! {
        #[test]
        fn rt_map_1_0(raw in proptest::collection::vec((0u64..u64::MAX / 4, 0u64..1 << 40), 0..200)) {
            let chunks: Vec<Chunk> = raw.iter().map(|&(offset, len)| Chunk { offset, len }).collect();
            let enc = encode_map_1_0(&chunks);
            // Fed one block at a time, as the applier does.
            let mut got = None;
            for n in (512..=enc.len()).step_by(512) {
                match decode_map_1_0(&enc[..n]).unwrap() {
                    Decoded::NeedMore => continue,
                    Decoded::Done { chunks, consumed } => { got = Some((chunks, consumed)); break; }
                }
            }
            let (dec, consumed) = got.expect("decoded within the encoding");
            proptest::prop_assert_eq!(dec, chunks);
            proptest::prop_assert_eq!(consumed, enc.len());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let _ = decode_map_1_0(&bytes);
        }
    }
}
