//! The send stream: a pure codec (no I/O beyond the `Read`/`Write` it is handed).
//!
//! ```text
//! header   magic "LAMSEND\0" | version u32 (1) | kind u8 (0 full, 1 incremental)
//!          | block_bytes u32 | size u64 (the volume's virtual size in bytes)
//!          | base_sha256 [32] (content of the base; zero for a full stream)
//!          | name_len u16 | name (the snapshot's name where it was sent from)
//!          | base_len u16 | base (the base's name there; empty for a full stream)
//!          | crc32c u32 (of every header byte before it)
//! record   b'D' | offset u64 | len u32 | crc32c u32 (of offset, len and data) | data[len]
//!          b'Z' | offset u64 | len u64 | crc32c u32 (of offset and len)   reads as zeros
//! end      b'E' | records u64 | data_bytes u64 | content_sha256 [32]
//!          | stream_sha256 [32] (of every stream byte before this field)
//! ```
//!
//! All integers little-endian. A reader checks each record's CRC as it goes (so a flipped
//! bit is found at its record), and the end record's counts and digest (so a cut or
//! reordered stream is found before anything is committed). `content_sha256` is the
//! digest of the whole volume as the receiver must end up with it; `base_sha256` names the
//! content an incremental applies to.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

pub const MAGIC: &[u8; 8] = b"LAMSEND\0";
pub const VERSION: u32 = 1;
/// Largest data record (a reader refuses more: a corrupt length must not allocate GiBs).
pub const MAX_RECORD: u32 = 4 << 20;
const MAX_NAME: usize = 4096;

/// What the stream describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub incremental: bool,
    pub block_bytes: u32,
    pub size: u64,
    pub base_sha256: [u8; 32],
    pub name: String,
    pub base: String,
}

/// One record after the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Data { offset: u64, data: Vec<u8> },
    Zero { offset: u64, len: u64 },
    End(Trailer),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trailer {
    pub records: u64,
    pub data_bytes: u64,
    pub content_sha256: [u8; 32],
    pub stream_sha256: [u8; 32],
}

/// Why a stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("reading the stream")]
    Io(#[from] io::Error),
    #[error("the stream ends early (cut?) after {at} bytes")]
    Truncated { at: u64 },
    #[error("not a lamina send stream (bad magic)")]
    Magic,
    #[error("stream version {0} is not supported (this build reads version {VERSION})")]
    Version(u32),
    #[error("stream byte {at}: {what}")]
    Corrupt { at: u64, what: String },
}

/// Writes a stream, keeping the running digest and counts for the end record.
pub struct Writer<W: Write> {
    out: W,
    hash: Sha256,
    records: u64,
    data_bytes: u64,
    /// Bytes written so far (the stream's size once finished).
    pub written: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W, h: &Header) -> io::Result<Self> {
        let mut w = Writer { out, hash: Sha256::new(), records: 0, data_bytes: 0, written: 0 };
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.push(u8::from(h.incremental));
        b.extend_from_slice(&h.block_bytes.to_le_bytes());
        b.extend_from_slice(&h.size.to_le_bytes());
        b.extend_from_slice(&h.base_sha256);
        for s in [&h.name, &h.base] {
            b.extend_from_slice(&(s.len().min(MAX_NAME) as u16).to_le_bytes());
            b.extend_from_slice(&s.as_bytes()[..s.len().min(MAX_NAME)]);
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        w.put(&b)?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.hash.update(b);
        self.written += b.len() as u64;
        self.out.write_all(b)
    }

    pub fn data(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        for (i, chunk) in data.chunks(MAX_RECORD as usize).enumerate() {
            let off = offset + (i * MAX_RECORD as usize) as u64;
            let mut h = [0u8; 13];
            h[0] = b'D';
            h[1..9].copy_from_slice(&off.to_le_bytes());
            h[9..13].copy_from_slice(&(chunk.len() as u32).to_le_bytes());
            let crc = crc32c::crc32c_append(crc32c::crc32c(&h[1..]), chunk);
            self.put(&h)?;
            self.put(&crc.to_le_bytes())?;
            self.put(chunk)?;
            self.records += 1;
            self.data_bytes += chunk.len() as u64;
        }
        Ok(())
    }

    pub fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let mut h = [0u8; 17];
        h[0] = b'Z';
        h[1..9].copy_from_slice(&offset.to_le_bytes());
        h[9..17].copy_from_slice(&len.to_le_bytes());
        let crc = crc32c::crc32c(&h[1..]);
        self.put(&h)?;
        self.put(&crc.to_le_bytes())?;
        self.records += 1;
        Ok(())
    }

    /// Volume data bytes written so far.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Writes the end record; returns the output and the stream's total size.
    pub fn finish(mut self, content_sha256: [u8; 32]) -> io::Result<(W, u64)> {
        let mut b = Vec::with_capacity(49);
        b.push(b'E');
        b.extend_from_slice(&self.records.to_le_bytes());
        b.extend_from_slice(&self.data_bytes.to_le_bytes());
        b.extend_from_slice(&content_sha256);
        self.put(&b)?;
        let digest: [u8; 32] = self.hash.clone().finalize().into();
        self.out.write_all(&digest)?;
        self.out.flush()?;
        Ok((self.out, self.written + 32))
    }
}

/// Reads a stream record by record, checking as it goes.
pub struct Reader<R: Read> {
    input: R,
    hash: Sha256,
    at: u64,
    records: u64,
    data_bytes: u64,
}

impl<R: Read> Reader<R> {
    /// Reads and checks the header.
    pub fn new(input: R) -> Result<(Self, Header), StreamError> {
        let mut r = Reader { input, hash: Sha256::new(), at: 0, records: 0, data_bytes: 0 };
        let mut fixed = [0u8; 8 + 4 + 1 + 4 + 8 + 32];
        r.take(&mut fixed)?;
        if &fixed[..8] != MAGIC {
            return Err(StreamError::Magic);
        }
        let version = u32::from_le_bytes(fixed[8..12].try_into().expect("4"));
        if version != VERSION {
            return Err(StreamError::Version(version));
        }
        let kind = fixed[12];
        if kind > 1 {
            return Err(r.corrupt(format!("unknown stream kind {kind}")));
        }
        let mut crc = crc32c::crc32c(&fixed);
        let mut names = Vec::new();
        for _ in 0..2 {
            let mut l = [0u8; 2];
            r.take(&mut l)?;
            let n = u16::from_le_bytes(l) as usize;
            if n > MAX_NAME {
                return Err(r.corrupt(format!("name of {n} bytes")));
            }
            let mut s = vec![0u8; n];
            r.take(&mut s)?;
            crc = crc32c::crc32c_append(crc32c::crc32c_append(crc, &l), &s);
            names.push(String::from_utf8(s).map_err(|_| r.corrupt("name is not UTF-8".into()))?);
        }
        let mut c = [0u8; 4];
        r.take(&mut c)?;
        if u32::from_le_bytes(c) != crc {
            return Err(r.corrupt("header checksum mismatch".into()));
        }
        let base = names.pop().unwrap_or_default();
        let name = names.pop().unwrap_or_default();
        let h = Header {
            incremental: kind == 1,
            block_bytes: u32::from_le_bytes(fixed[13..17].try_into().expect("4")),
            size: u64::from_le_bytes(fixed[17..25].try_into().expect("8")),
            base_sha256: fixed[25..57].try_into().expect("32"),
            name,
            base,
        };
        Ok((r, h))
    }

    /// Bytes read so far.
    pub fn position(&self) -> u64 {
        self.at
    }

    fn corrupt(&self, what: String) -> StreamError {
        StreamError::Corrupt { at: self.at, what }
    }

    fn take(&mut self, b: &mut [u8]) -> Result<(), StreamError> {
        let mut got = 0;
        while got < b.len() {
            match self.input.read(&mut b[got..]) {
                Ok(0) => return Err(StreamError::Truncated { at: self.at + got as u64 }),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.hash.update(&*b);
        self.at += b.len() as u64;
        Ok(())
    }

    /// The next record; after [`Record::End`] (checked against counts and digest) the
    /// stream is complete.
    pub fn next_record(&mut self) -> Result<Record, StreamError> {
        let mut tag = [0u8; 1];
        self.take(&mut tag)?;
        match tag[0] {
            b'D' => {
                let mut h = [0u8; 16];
                self.take(&mut h)?;
                let offset = u64::from_le_bytes(h[..8].try_into().expect("8"));
                let len = u32::from_le_bytes(h[8..12].try_into().expect("4"));
                let crc = u32::from_le_bytes(h[12..16].try_into().expect("4"));
                if len == 0 || len > MAX_RECORD {
                    return Err(self.corrupt(format!("data record of {len} bytes")));
                }
                let mut data = vec![0u8; len as usize];
                self.take(&mut data)?;
                if crc32c::crc32c_append(crc32c::crc32c(&h[..12]), &data) != crc {
                    return Err(self.corrupt(format!("data record at offset {offset}: checksum")));
                }
                self.records += 1;
                self.data_bytes += u64::from(len);
                Ok(Record::Data { offset, data })
            }
            b'Z' => {
                let mut h = [0u8; 20];
                self.take(&mut h)?;
                if crc32c::crc32c(&h[..16]) != u32::from_le_bytes(h[16..].try_into().expect("4")) {
                    return Err(self.corrupt("zero record: checksum".into()));
                }
                self.records += 1;
                Ok(Record::Zero {
                    offset: u64::from_le_bytes(h[..8].try_into().expect("8")),
                    len: u64::from_le_bytes(h[8..16].try_into().expect("8")),
                })
            }
            b'E' => {
                let mut h = [0u8; 48];
                self.take(&mut h)?;
                let digest: [u8; 32] = self.hash.clone().finalize().into();
                let mut d = [0u8; 32];
                self.take(&mut d)?;
                let t = Trailer {
                    records: u64::from_le_bytes(h[..8].try_into().expect("8")),
                    data_bytes: u64::from_le_bytes(h[8..16].try_into().expect("8")),
                    content_sha256: h[16..48].try_into().expect("32"),
                    stream_sha256: d,
                };
                if t.stream_sha256 != digest {
                    return Err(self.corrupt("stream digest mismatch".into()));
                }
                if (t.records, t.data_bytes) != (self.records, self.data_bytes) {
                    return Err(self.corrupt(format!(
                        "end record counts {} records / {} bytes, the stream held {} / {}",
                        t.records, t.data_bytes, self.records, self.data_bytes
                    )));
                }
                // Nothing may follow the end record.
                let mut extra = [0u8; 1];
                match self.input.read(&mut extra) {
                    Ok(0) => Ok(Record::End(t)),
                    Ok(_) => Err(self.corrupt("bytes after the end record".into())),
                    Err(e) => Err(e.into()),
                }
            }
            t => Err(self.corrupt(format!("unknown record tag {t:#04x}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Header, Vec<u8>) {
        let h = Header {
            incremental: true,
            block_bytes: 65536,
            size: 1 << 20,
            base_sha256: [7; 32],
            name: "s2".into(),
            base: "s1".into(),
        };
        let mut w = Writer::new(Vec::new(), &h).unwrap();
        w.data(4096, &[1, 2, 3]).unwrap();
        w.zero(65536, 65536).unwrap();
        let (out, n) = w.finish([9; 32]).unwrap();
        assert_eq!(n as usize, out.len());
        (h, out)
    }

    fn read_all(b: &[u8]) -> Result<(Header, Vec<Record>), StreamError> {
        let (mut r, h) = Reader::new(b)?;
        let mut v = Vec::new();
        loop {
            let rec = r.next_record()?;
            let end = matches!(rec, Record::End(_));
            v.push(rec);
            if end {
                return Ok((h, v));
            }
        }
    }

    #[test]
    fn rt_stream() {
        let (h, b) = sample();
        let (h2, recs) = read_all(&b).unwrap();
        assert_eq!(h2, h);
        assert_eq!(recs[0], Record::Data { offset: 4096, data: vec![1, 2, 3] });
        assert_eq!(recs[1], Record::Zero { offset: 65536, len: 65536 });
        assert!(matches!(&recs[2], Record::End(t) if t.records == 2 && t.data_bytes == 3));
    }

    #[test]
    fn every_cut_and_every_bit_flip_is_refused() {
        let (_, b) = sample();
        for cut in 0..b.len() {
            let e = read_all(&b[..cut]).expect_err("a cut stream is refused");
            assert!(matches!(e, StreamError::Truncated { .. }), "cut at {cut}: {e}");
        }
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[i] ^= 1 << bit;
                let e = read_all(&c).expect_err("a flipped bit is refused");
                // A flipped length may also make the stream look cut; it never reads as I/O.
                assert!(!matches!(e, StreamError::Io(_)), "flip of bit {bit} in byte {i}: {e}");
            }
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(matches!(read_all(&longer), Err(StreamError::Corrupt { .. })));
        assert!(matches!(read_all(&b[..b.len() - 1]), Err(StreamError::Truncated { .. })));
    }
}
