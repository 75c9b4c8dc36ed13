//! `send` and `receive`: a volume (a snapshot) as a stream, whole or as the difference from
//! an older snapshot, and back into a pool (see [`super::stream`] for the bytes).
//!
//! Receiving writes into a temporary volume (`.recv-NAME`) and renames it to NAME only after
//! the end record, the stream digest and the content digest all check out, in one commit;
//! on any failure the temporary volume is removed. Nothing is committed before the end, so
//! a crash half-way leaves the committed pool as it was (a leftover temporary volume from a
//! crash after some other commit is removed by the next receive of that name).

use std::io::{Read, Write};

use sha2::{Digest, Sha256};

use super::stream::{self, Header, Record, StreamError};
use super::{diff, extents, Change};
use crate::pool::{self, Pool};
use crate::units::{Bytes, ThinId};

/// Bytes read from the pool at a time (and the most one data record carries).
const CHUNK: u64 = 1 << 20;

/// What went wrong, with the kind a caller can match on.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{doing}")]
    Pool {
        doing: String,
        #[source]
        source: pool::Error,
    },
    #[error("writing the stream")]
    Write(#[source] std::io::Error),
    #[error("refused the stream")]
    Stream(#[from] StreamError),
    #[error(
        "base volume {base:?} here does not hold the content the stream was made against \
         (sha256 {here} here, {wanted} in the stream)"
    )]
    BaseMismatch { base: String, here: String, wanted: String },
    #[error("volume {0:?} already exists")]
    Exists(String),
    #[error("the stream {0}")]
    Invalid(String),
    #[error(
        "the received volume's content does not match the stream's digest (sha256 {got}, \
         stream says {wanted})"
    )]
    ContentMismatch { got: String, wanted: String },
}

fn pe(doing: impl Into<String>) -> impl FnOnce(pool::Error) -> SendError {
    let doing = doing.into();
    move |source| SendError::Pool { doing, source }
}

/// The size of what was sent or received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of the stream.
    pub stream_bytes: u64,
    /// Volume data carried.
    pub data_bytes: u64,
    pub records: u64,
}

/// The sha256 of a volume's first `size` bytes (unmapped ranges read as zeros).
pub fn volume_sha256(pool: &Pool, id: ThinId, size: u64) -> Result<[u8; 32], SendError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(CHUNK) as usize;
        pool.read(id, off, &mut buf[..n]).map_err(pe(format!("reading volume {id}")))?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(h.finalize().into())
}

/// Writes volume `snap` as a stream to `out`: whole, or (`base`) only what differs from
/// volume `base` of the same pool.
pub fn send<W: Write>(
    pool: &Pool,
    snap: &str,
    base: Option<&str>,
    out: W,
) -> Result<Stats, SendError> {
    let v = pool.volume(snap).map_err(pe(format!("sending {snap:?}")))?;
    let bs = pool.block_bytes();
    let runs = |id: ThinId, what: &str| -> Result<_, SendError> {
        let m = pool.mappings(id).map_err(pe(format!("reading the mappings of {what:?}")))?;
        Ok(extents(m.map(|(vb, bt)| (vb.0, bt.block.0))))
    };
    let (left, base_sha256) = match base {
        Some(b) => {
            let bv = pool.volume(b).map_err(pe(format!("sending from base {b:?}")))?;
            (runs(bv.id, b)?, volume_sha256(pool, bv.id, bv.size.get())?)
        }
        None => (Vec::new(), [0; 32]),
    };
    let right = runs(v.id, snap)?;
    let content = volume_sha256(pool, v.id, v.size.get())?;
    let h = Header {
        incremental: base.is_some(),
        block_bytes: u32::try_from(bs).unwrap_or(u32::MAX),
        size: v.size.get(),
        base_sha256,
        name: snap.to_owned(),
        base: base.unwrap_or_default().to_owned(),
    };
    let mut w = stream::Writer::new(out, &h).map_err(SendError::Write)?;
    let mut buf = vec![0u8; CHUNK as usize];
    for r in diff(&left, &right) {
        let (start, end) = (r.begin.0 * bs, ((r.begin.0 + r.len) * bs).min(v.size.get()));
        if start >= end {
            continue;
        }
        match r.change {
            Change::Same => {}
            Change::LeftOnly => w.zero(start, end - start).map_err(SendError::Write)?,
            Change::RightOnly | Change::Different => {
                let mut off = start;
                while off < end {
                    let n = (end - off).min(CHUNK) as usize;
                    pool.read(v.id, off, &mut buf[..n]).map_err(pe(format!("reading {snap:?}")))?;
                    w.data(off, &buf[..n]).map_err(SendError::Write)?;
                    off += n as u64;
                }
            }
        }
    }
    let (data_bytes, records) = (w.data_bytes(), w.records());
    let (_, stream_bytes) = w.finish(content).map_err(SendError::Write)?;
    Ok(Stats { stream_bytes, data_bytes, records })
}

/// The temporary volume a receive of `name` writes into.
pub fn temp_name(name: &str) -> String {
    format!(".recv-{name}")
}

/// Reads a stream from `input` into a new volume `name` of `pool`, committed only when the
/// whole stream checked out. An incremental stream applies to `base` (default: the base
/// name the stream carries), whose content must be what the stream was made against.
pub fn receive<R: Read>(
    pool: &Pool,
    name: &str,
    base: Option<&str>,
    input: R,
) -> Result<Stats, SendError> {
    if pool.volume(name).is_ok() {
        return Err(SendError::Exists(name.to_owned()));
    }
    let temp = temp_name(name);
    if pool.volume(&temp).is_ok() {
        // Left by a receive that crashed after some other commit.
        pool.remove_volume(&temp).map_err(pe(format!("removing the stale {temp:?}")))?;
    }
    let (mut r, h) = stream::Reader::new(input)?;
    let made = if h.incremental {
        let b = base.unwrap_or(&h.base);
        let bv = pool.volume(b).map_err(pe(format!("finding the base volume {b:?}")))?;
        let here = volume_sha256(pool, bv.id, bv.size.get())?;
        if here != h.base_sha256 {
            return Err(SendError::BaseMismatch {
                base: b.to_owned(),
                here: hex::encode(here),
                wanted: hex::encode(h.base_sha256),
            });
        }
        pool.snapshot_volume(b, &temp).map_err(pe(format!("snapshotting {b:?}")))
    } else {
        pool.create_volume(&temp, Bytes::new(h.size)).map_err(pe(format!("creating {temp:?}")))
    };
    let id = made?;
    let result = apply(pool, id, &h, &mut r).and_then(|stats| {
        pool.rename_volume(&temp, name).map_err(pe(format!("renaming {temp:?}")))?;
        pool.commit().map_err(pe("committing the received volume"))?;
        Ok(stats)
    });
    if result.is_err() {
        // Nothing was committed since the temporary volume was made: dropping it leaves the
        // transaction as it was. Best effort: the error that matters is the one returned.
        let _ = pool.remove_volume(&temp);
    }
    result
}

fn apply<R: Read>(
    pool: &Pool,
    id: ThinId,
    h: &Header,
    r: &mut stream::Reader<R>,
) -> Result<Stats, SendError> {
    let v = pool.volume(&pool_name(pool, id)?).map_err(pe("reading the temporary volume"))?;
    if v.size != Bytes::new(h.size) {
        pool.resize_volume(&v.name, Bytes::new(h.size))
            .map_err(pe("resizing to the stream's size"))?;
    }
    let mut stats = Stats::default();
    loop {
        match r.next_record()? {
            Record::Data { offset, data } => {
                let end = offset.checked_add(data.len() as u64);
                if end.is_none_or(|e| e > h.size) {
                    return Err(SendError::Invalid(format!("writes past the end at {offset}")));
                }
                pool.write(id, offset, &data).map_err(pe("writing received data"))?;
                stats.data_bytes += data.len() as u64;
                stats.records += 1;
            }
            Record::Zero { offset, len } => {
                if offset.checked_add(len).is_none_or(|e| e > h.size) {
                    return Err(SendError::Invalid(format!("zeroes past the end at {offset}")));
                }
                pool.write_zeroes(id, offset, len, true).map_err(pe("zeroing a range"))?;
                stats.records += 1;
            }
            Record::End(t) => {
                let got = volume_sha256(pool, id, h.size)?;
                if got != t.content_sha256 {
                    return Err(SendError::ContentMismatch {
                        got: hex::encode(got),
                        wanted: hex::encode(t.content_sha256),
                    });
                }
                stats.stream_bytes = r.position();
                return Ok(stats);
            }
        }
    }
}

fn pool_name(pool: &Pool, id: ThinId) -> Result<String, SendError> {
    let vols = pool.volumes().map_err(pe("listing volumes"))?;
    vols.into_iter()
        .find(|v| v.id == id)
        .map(|v| v.name)
        .ok_or_else(|| SendError::Invalid("lost its temporary volume".into()))
}
