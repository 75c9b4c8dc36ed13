//! Transmission codec: requests and replies. Pure: bytes in, bytes out.
//!
//! ```text
//! compact request   0x25609513 u32 | flags u16 | type u16 | cookie u64 | offset u64 | len u32  (28)
//! extended request  0x21e41c71 u32 | flags u16 | type u16 | cookie u64 | offset u64 | len u64  (32)
//! simple reply      0x67446698 u32 | error u32 | cookie u64                                    (16)
//! structured chunk  0x668e33ef u32 | flags u16 | type u16 | cookie u64 | len u32               (20)
//! extended chunk    0x6e8a278c u32 | flags u16 | type u16 | cookie u64 | offset u64 | len u64  (32)
//! ```
//!
//! Which request header a connection uses is fixed by the handshake ([`HeaderMode`]); the
//! compact header pairs with simple or structured replies, the extended one with extended
//! chunks only.

use super::wire::*;

/// Request/reply header family negotiated for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderMode {
    Compact,
    Extended,
}

impl HeaderMode {
    pub fn request_len(self) -> usize {
        match self {
            Self::Compact => 28,
            Self::Extended => 32,
        }
    }

    pub fn chunk_header_len(self) -> usize {
        match self {
            Self::Compact => 20,
            Self::Extended => 32,
        }
    }
}

/// One request header. `length` is the u32 field widened for compact headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Request {
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u64,
}

impl Request {
    /// Bytes of payload that follow this header on the wire.
    pub fn payload_len(&self, mode: HeaderMode) -> u64 {
        match mode {
            HeaderMode::Compact if self.command == CMD_WRITE => self.length,
            HeaderMode::Compact => 0,
            HeaderMode::Extended if self.flags & CMD_FLAG_PAYLOAD_LEN != 0 => self.length,
            HeaderMode::Extended => 0,
        }
    }
}

/// Decodes a request header of exactly `mode.request_len()` bytes.
pub fn decode_request(mode: HeaderMode, b: &[u8]) -> Result<Request, ProtoError> {
    let what = "request header";
    if b.len() != mode.request_len() {
        return Err(ProtoError::Truncated { what, need: mode.request_len(), have: b.len() });
    }
    let mut c = Cursor::new(b, what);
    let magic = c.u32()?;
    let want = match mode {
        HeaderMode::Compact => REQUEST_MAGIC,
        HeaderMode::Extended => EXTENDED_REQUEST_MAGIC,
    };
    if magic != want {
        return Err(ProtoError::BadMagic { what, found: magic.into() });
    }
    let flags = c.u16()?;
    let command = c.u16()?;
    let cookie = c.u64()?;
    let offset = c.u64()?;
    let length = match mode {
        HeaderMode::Compact => c.u32()?.into(),
        HeaderMode::Extended => c.u64()?,
    };
    Ok(Request { flags, command, cookie, offset, length })
}

/// Appends a request header. In compact mode `length` must fit in 32 bits (it is truncated
/// otherwise; only clients encode requests).
pub fn encode_request(mode: HeaderMode, r: &Request, out: &mut Vec<u8>) {
    match mode {
        HeaderMode::Compact => out.put_u32(REQUEST_MAGIC),
        HeaderMode::Extended => out.put_u32(EXTENDED_REQUEST_MAGIC),
    }
    out.put_u16(r.flags);
    out.put_u16(r.command);
    out.put_u64(r.cookie);
    out.put_u64(r.offset);
    match mode {
        HeaderMode::Compact => out.put_u32(r.length as u32),
        HeaderMode::Extended => out.put_u64(r.length),
    }
}

pub const SIMPLE_REPLY_LEN: usize = 16;

pub fn encode_simple_reply(cookie: u64, error: u32, out: &mut Vec<u8>) {
    out.put_u32(SIMPLE_REPLY_MAGIC);
    out.put_u32(error);
    out.put_u64(cookie);
}

/// A decoded reply header of any of the three kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    Simple {
        error: u32,
        cookie: u64,
    },
    /// Structured (compact) or extended chunk; `offset` is 0 for structured chunks.
    Chunk {
        extended: bool,
        flags: u16,
        kind: u16,
        cookie: u64,
        offset: u64,
        length: u64,
    },
}

/// Header length implied by the first four bytes (the magic).
pub fn reply_header_len(magic: [u8; 4]) -> Result<usize, ProtoError> {
    match u32::from_be_bytes(magic) {
        SIMPLE_REPLY_MAGIC => Ok(16),
        STRUCTURED_REPLY_MAGIC => Ok(20),
        EXTENDED_REPLY_MAGIC => Ok(32),
        m => Err(ProtoError::BadMagic { what: "reply header", found: m.into() }),
    }
}

pub fn decode_reply_header(b: &[u8]) -> Result<ReplyHeader, ProtoError> {
    let what = "reply header";
    let mut c = Cursor::new(b, what);
    let magic = c.u32()?;
    let h = match magic {
        SIMPLE_REPLY_MAGIC => ReplyHeader::Simple { error: c.u32()?, cookie: c.u64()? },
        STRUCTURED_REPLY_MAGIC => ReplyHeader::Chunk {
            extended: false,
            flags: c.u16()?,
            kind: c.u16()?,
            cookie: c.u64()?,
            offset: 0,
            length: c.u32()?.into(),
        },
        EXTENDED_REPLY_MAGIC => ReplyHeader::Chunk {
            extended: true,
            flags: c.u16()?,
            kind: c.u16()?,
            cookie: c.u64()?,
            offset: c.u64()?,
            length: c.u64()?,
        },
        m => return Err(ProtoError::BadMagic { what, found: m.into() }),
    };
    c.end()?;
    Ok(h)
}

/// Appends a chunk header. `req_offset` is echoed only by extended headers.
pub fn encode_chunk_header(
    mode: HeaderMode,
    flags: u16,
    kind: u16,
    cookie: u64,
    req_offset: u64,
    payload_len: u64,
    out: &mut Vec<u8>,
) {
    match mode {
        HeaderMode::Compact => {
            out.put_u32(STRUCTURED_REPLY_MAGIC);
            out.put_u16(flags);
            out.put_u16(kind);
            out.put_u64(cookie);
            out.put_u32(u32::try_from(payload_len).unwrap_or(u32::MAX));
        }
        HeaderMode::Extended => {
            out.put_u32(EXTENDED_REPLY_MAGIC);
            out.put_u16(flags);
            out.put_u16(kind);
            out.put_u64(cookie);
            out.put_u64(req_offset);
            out.put_u64(payload_len);
        }
    }
}

/// Header plus the 8-byte data offset of an `OFFSET_DATA` chunk whose `data_len` bytes of data
/// the caller sends next (so data is never copied into the reply buffer).
#[allow(clippy::too_many_arguments)]
pub fn encode_offset_data_prefix(
    mode: HeaderMode,
    done: bool,
    cookie: u64,
    req_offset: u64,
    data_offset: u64,
    data_len: u64,
    out: &mut Vec<u8>,
) {
    let flags = if done { REPLY_FLAG_DONE } else { 0 };
    encode_chunk_header(mode, flags, REPLY_TYPE_OFFSET_DATA, cookie, req_offset, 8 + data_len, out);
    out.put_u64(data_offset);
}

/// A structured/extended reply chunk payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    None,
    OffsetData {
        offset: u64,
        data: Vec<u8>,
    },
    OffsetHole {
        offset: u64,
        len: u32,
    },
    /// Context id and (length, status) descriptors.
    BlockStatus {
        context: u32,
        extents: Vec<(u32, u32)>,
    },
    BlockStatusExt {
        context: u32,
        extents: Vec<(u64, u64)>,
    },
    Error {
        error: u32,
        message: String,
    },
    ErrorOffset {
        error: u32,
        message: String,
        offset: u64,
    },
}

impl Chunk {
    pub fn kind(&self) -> u16 {
        match self {
            Self::None => REPLY_TYPE_NONE,
            Self::OffsetData { .. } => REPLY_TYPE_OFFSET_DATA,
            Self::OffsetHole { .. } => REPLY_TYPE_OFFSET_HOLE,
            Self::BlockStatus { .. } => REPLY_TYPE_BLOCK_STATUS,
            Self::BlockStatusExt { .. } => REPLY_TYPE_BLOCK_STATUS_EXT,
            Self::Error { .. } => REPLY_TYPE_ERROR,
            Self::ErrorOffset { .. } => REPLY_TYPE_ERROR_OFFSET,
        }
    }
}

fn put_message(message: &str, out: &mut Vec<u8>) {
    // Error messages are ours; keep them within the u16 length and the spec's 4096 bytes.
    let mut end = message.len().min(MAX_STRING);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16(end as u16);
    out.extend_from_slice(&message.as_bytes()[..end]);
}

/// Appends a whole chunk (header and payload).
pub fn encode_chunk(
    mode: HeaderMode,
    done: bool,
    cookie: u64,
    req_offset: u64,
    chunk: &Chunk,
    out: &mut Vec<u8>,
) {
    let mut p = Vec::new();
    match chunk {
        Chunk::None => {}
        Chunk::OffsetData { offset, data } => {
            p.put_u64(*offset);
            p.extend_from_slice(data);
        }
        Chunk::OffsetHole { offset, len } => {
            p.put_u64(*offset);
            p.put_u32(*len);
        }
        Chunk::BlockStatus { context, extents } => {
            p.put_u32(*context);
            for &(l, s) in extents {
                p.put_u32(l);
                p.put_u32(s);
            }
        }
        Chunk::BlockStatusExt { context, extents } => {
            p.put_u32(*context);
            p.put_u32(len32(extents.len()));
            for &(l, s) in extents {
                p.put_u64(l);
                p.put_u64(s);
            }
        }
        Chunk::Error { error, message } => {
            p.put_u32(*error);
            put_message(message, &mut p);
        }
        Chunk::ErrorOffset { error, message, offset } => {
            p.put_u32(*error);
            put_message(message, &mut p);
            p.put_u64(*offset);
        }
    }
    let flags = if done { REPLY_FLAG_DONE } else { 0 };
    encode_chunk_header(mode, flags, chunk.kind(), cookie, req_offset, p.len() as u64, out);
    out.extend_from_slice(&p);
}

/// Decodes a chunk payload of type `kind` (client side; used by tests).
pub fn decode_chunk(kind: u16, payload: &[u8]) -> Result<Chunk, ProtoError> {
    let what = "reply chunk";
    let mut c = Cursor::new(payload, what);
    let chunk = match kind {
        REPLY_TYPE_NONE => Chunk::None,
        REPLY_TYPE_OFFSET_DATA => {
            let offset = c.u64()?;
            let data = c.rest();
            if data.is_empty() {
                return Err(invalid(what, "OFFSET_DATA without data"));
            }
            Chunk::OffsetData { offset, data: data.to_vec() }
        }
        REPLY_TYPE_OFFSET_HOLE => Chunk::OffsetHole { offset: c.u64()?, len: c.u32()? },
        REPLY_TYPE_BLOCK_STATUS => {
            let context = c.u32()?;
            if c.remaining() == 0 || !c.remaining().is_multiple_of(8) {
                return Err(invalid(what, "BLOCK_STATUS needs one or more 8-byte extents"));
            }
            let mut extents = Vec::new();
            while c.remaining() > 0 {
                extents.push((c.u32()?, c.u32()?));
            }
            Chunk::BlockStatus { context, extents }
        }
        REPLY_TYPE_BLOCK_STATUS_EXT => {
            let context = c.u32()?;
            let count = c.u32()? as usize;
            if c.remaining() / 16 != count || !c.remaining().is_multiple_of(16) || count == 0 {
                return Err(invalid(what, "BLOCK_STATUS_EXT count disagrees with its length"));
            }
            let mut extents = Vec::new();
            while c.remaining() > 0 {
                extents.push((c.u64()?, c.u64()?));
            }
            Chunk::BlockStatusExt { context, extents }
        }
        REPLY_TYPE_ERROR | REPLY_TYPE_ERROR_OFFSET => {
            let error = c.u32()?;
            let n = c.u16()? as usize;
            let message = c.string(n)?;
            if kind == REPLY_TYPE_ERROR {
                Chunk::Error { error, message }
            } else {
                Chunk::ErrorOffset { error, message, offset: c.u64()? }
            }
        }
        other => return Err(invalid(what, format!("unknown chunk type {other:#x}"))),
    };
    c.end()?;
    Ok(chunk)
}
