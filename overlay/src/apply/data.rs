//! Entry data and header fields: file contents (holes kept, GNU PAX sparse maps), PAX
//! numbers and times, and the tar-stream padding reader.

use super::*;

pub(super) fn parse_num(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// PAX times are decimal seconds with an optional fraction.
pub(super) fn parse_pax_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nsec = 0i64;
    for (i, c) in frac.bytes().take(9).enumerate() {
        if !c.is_ascii_digit() {
            return None;
        }
        nsec += i64::from(c - b'0') * 10i64.pow(8 - i as u32);
    }
    if secs < 0 && nsec > 0 {
        return Some(Timespec { tv_sec: secs - 1, tv_nsec: (1_000_000_000 - nsec) as _ });
    }
    Some(Timespec { tv_sec: secs, tv_nsec: nsec as _ })
}

/// A reader that, once its inner stream ends, supplies zeros up to the next 512-byte record
/// plus a 1024-byte end-of-archive marker. Tar writers with a missing trailer or an unpadded
/// last block (umoci 0.4.7 `insert`, umoci#436) then read as complete archives; after a proper
/// trailer the extra zeros are never reached. DiffIDs are hashed below this wrapper, over
/// the stream exactly as stored.
pub struct PadTail<R> {
    inner: R,
    count: u64,
    pad_left: Option<u64>,
}

impl<R: Read> PadTail<R> {
    pub fn new(inner: R) -> Self {
        PadTail { inner, count: 0, pad_left: None }
    }
}

impl<R: Read> Read for PadTail<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(left) = &mut self.pad_left {
            let n = (*left).min(buf.len() as u64) as usize;
            buf[..n].fill(0);
            *left -= n as u64;
            return Ok(n);
        }
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let partial = self.count % 512;
            let pad = if partial == 0 { 0 } else { 512 - partial };
            self.pad_left = Some(pad + 1024);
            return self.read(buf);
        }
        self.count += n as u64;
        Ok(n)
    }
}

/// The umask, read from /proc (setting it to read it would race with other threads).
pub(super) fn process_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let v = s.lines().find_map(|l| l.strip_prefix("Umask:"))?;
            u32::from_str_radix(v.trim(), 8).ok()
        })
        .unwrap_or(0o777)
}

/// Copy entry data into `fd`, leaving all-zero chunks as holes (keeps sparse files sparse).
pub(super) fn write_sparse(
    r: &mut impl Read,
    fd: &impl AsFd,
    size: u64,
    buf: &mut [u8],
) -> std::io::Result<()> {
    // Where the file's data ends so far: a trailing hole needs an explicit truncate.
    let end = write_range(r, fd, 0, size, buf)?;
    if end != size {
        rustix::fs::ftruncate(fd, size)?;
    }
    Ok(())
}

/// Copy `len` bytes of entry data to `fd` at `start`, skipping all-zero chunks; returns where
/// the last data written ends (`start` when all was zero).
pub(super) fn write_range(
    r: &mut impl Read,
    fd: &impl AsFd,
    start: u64,
    len: u64,
    buf: &mut [u8],
) -> std::io::Result<u64> {
    let mut done_total = 0u64;
    let mut end = start;
    while done_total < len {
        let off = start + done_total;
        let want = ((len - done_total) as usize).min(buf.len());
        let mut got = 0;
        while got < want {
            let n = r.read(&mut buf[got..want])?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("data ends at {} of {len} bytes", done_total + got as u64),
                ));
            }
            got += n;
        }
        if buf[..got].iter().any(|b| *b != 0) {
            let mut done = 0;
            while done < got {
                done += rustix::io::pwrite(fd, &buf[done..got], off + done as u64)?;
            }
            end = off + got as u64;
        }
        done_total += got as u64;
    }
    Ok(end)
}

/// Unpack a GNU PAX sparse entry (see [`crate::sparse`]) as the real sparse file: read the
/// map (from the data for version 1.0), check it, write each chunk at its offset and size
/// the file to its real size. `stored` is the entry's size in the archive.
pub(super) fn write_pax_sparse(
    r: &mut impl Read,
    fd: &impl AsFd,
    stored: u64,
    sp: &PaxSparse,
    buf: &mut [u8],
    raw: &[u8],
) -> Result<()> {
    let bad = |e: sparse::SparseError| entry_err(ErrorKind::Invalid, raw, e);
    let (chunks, map_len) = match &sp.map {
        sparse::MapSource::Records(c) => (c.clone(), 0u64),
        sparse::MapSource::Data => {
            let mut map = Vec::new();
            loop {
                if map.len() as u64 + 512 > stored {
                    return Err(bad(sparse::SparseError::Map("map runs past the entry's data")));
                }
                let at = map.len();
                map.resize(at + 512, 0);
                r.read_exact(&mut map[at..]).map_err(|e| entry_io(raw, "read sparse map", e))?;
                match sparse::decode_map_1_0(&map).map_err(bad)? {
                    sparse::Decoded::NeedMore => continue,
                    // Decoded block by block, so the map ends in the last block read.
                    sparse::Decoded::Done { chunks, .. } => break (chunks, map.len() as u64),
                }
            }
        }
    };
    sparse::validate(&chunks, sp.real_size, stored - map_len).map_err(bad)?;
    for c in &chunks {
        write_range(r, fd, c.offset, c.len, buf)
            .map_err(|e| entry_io(raw, "write sparse data", e))?;
    }
    rustix::fs::ftruncate(fd, sp.real_size).map_err(|e| entry_io(raw, "size sparse file", e))
}
