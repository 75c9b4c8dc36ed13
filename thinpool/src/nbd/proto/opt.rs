//! Handshake codec: greeting, client flags, options and option replies. Pure: bytes in, bytes
//! out.
//!
//! ```text
//! server greeting   "NBDMAGIC" u64 | "IHAVEOPT" u64 | handshake flags u16          (18 bytes)
//! client flags      u32                                                            (4 bytes)
//! option            "IHAVEOPT" u64 | option u32 | length u32 | payload[length]
//! option reply      OPT_REPLY_MAGIC u64 | option u32 | reply type u32 | length u32 | payload
//! INFO / GO payload name len u32 | name | count u16 | count x info type u16
//! META_CONTEXT      name len u32 | name | count u32 | count x (len u32 | query)
//! ```
//!
//! Every decoder checks lengths against what is actually present before touching bytes, never
//! sizes an allocation from a client count, and insists that inner fields add up to exactly the
//! declared option length.

use super::wire::*;

pub const GREETING_LEN: usize = 18;
pub const OPTION_HEADER_LEN: usize = 16;
pub const OPTION_REPLY_HEADER_LEN: usize = 20;

pub fn encode_greeting(flags: u16) -> [u8; GREETING_LEN] {
    let mut b = [0u8; GREETING_LEN];
    b[..8].copy_from_slice(&INIT_PASSWD.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..].copy_from_slice(&flags.to_be_bytes());
    b
}

/// Returns the server's handshake flags.
pub fn decode_greeting(b: &[u8]) -> Result<u16, ProtoError> {
    let mut c = Cursor::new(b, "greeting");
    let magic = c.u64()?;
    if magic != INIT_PASSWD {
        return Err(ProtoError::BadMagic { what: "greeting", found: magic });
    }
    let opts = c.u64()?;
    if opts != IHAVEOPT {
        return Err(ProtoError::BadMagic { what: "greeting (newstyle)", found: opts });
    }
    let flags = c.u16()?;
    c.end()?;
    Ok(flags)
}

/// An option's fixed header; the payload (`len` bytes) follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

/// Decodes an option header, refusing a payload longer than `max_len` before anything of it is
/// read (a client announcing gigabytes is disconnected, not drained).
pub fn decode_option_header(b: &[u8], max_len: u32) -> Result<OptionHeader, ProtoError> {
    let mut c = Cursor::new(b, "option header");
    let magic = c.u64()?;
    if magic != IHAVEOPT {
        return Err(ProtoError::BadMagic { what: "option header", found: magic });
    }
    let option = c.u32()?;
    let len = c.u32()?;
    c.end()?;
    if len > max_len {
        return Err(ProtoError::TooLong {
            what: "option payload",
            len: len.into(),
            max: max_len.into(),
        });
    }
    Ok(OptionHeader { option, len })
}

/// The payload of INFO and GO.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExportQuery {
    pub name: String,
    pub info: Vec<u16>,
}

/// The payload of LIST_META_CONTEXT and SET_META_CONTEXT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetaQuery {
    pub export: String,
    pub queries: Vec<String>,
}

/// A decoded client option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    ExportName(String),
    Abort,
    List,
    StartTls,
    Info(ExportQuery),
    Go(ExportQuery),
    StructuredReply,
    ListMetaContext(MetaQuery),
    SetMetaContext(MetaQuery),
    ExtendedHeaders,
    /// Anything else; answered `ERR_UNSUP` after its payload has been consumed.
    Unknown {
        option: u32,
        data: Vec<u8>,
    },
}

impl ClientOption {
    pub fn code(&self) -> u32 {
        match self {
            Self::ExportName(_) => OPT_EXPORT_NAME,
            Self::Abort => OPT_ABORT,
            Self::List => OPT_LIST,
            Self::StartTls => OPT_STARTTLS,
            Self::Info(_) => OPT_INFO,
            Self::Go(_) => OPT_GO,
            Self::StructuredReply => OPT_STRUCTURED_REPLY,
            Self::ListMetaContext(_) => OPT_LIST_META_CONTEXT,
            Self::SetMetaContext(_) => OPT_SET_META_CONTEXT,
            Self::ExtendedHeaders => OPT_EXTENDED_HEADERS,
            Self::Unknown { option, .. } => *option,
        }
    }
}

fn no_payload(what: &'static str, payload: &[u8]) -> Result<(), ProtoError> {
    if payload.is_empty() {
        Ok(())
    } else {
        Err(invalid(what, "option takes no payload"))
    }
}

/// The export name that opens INFO, GO and the META_CONTEXT options: a u32 length, then the
/// name, which must leave room for the `after` bytes of count that follow it.
fn option_name(c: &mut Cursor<'_>, what: &'static str, after: usize) -> Result<String, ProtoError> {
    let name_len = c.u32()? as usize;
    if name_len > c.remaining().saturating_sub(after) {
        return Err(invalid(what, "name length exceeds the option length"));
    }
    c.string(name_len)
}

fn decode_export_query(what: &'static str, payload: &[u8]) -> Result<ExportQuery, ProtoError> {
    let mut c = Cursor::new(payload, what);
    // The name must leave room for the u16 count: optlen >= 4 + name + 2.
    let name = option_name(&mut c, what, 2)?;
    let count = c.u16()? as usize;
    if c.remaining() != count * 2 {
        return Err(invalid(what, "info request count disagrees with the option length"));
    }
    let mut info = Vec::new();
    for _ in 0..count {
        info.push(c.u16()?);
    }
    c.end()?;
    Ok(ExportQuery { name, info })
}

fn decode_meta_query(what: &'static str, payload: &[u8]) -> Result<MetaQuery, ProtoError> {
    let mut c = Cursor::new(payload, what);
    let export = option_name(&mut c, what, 4)?;
    let count = c.u32()?;
    let mut queries = Vec::new();
    for _ in 0..count {
        let len = c.u32()? as usize;
        if len > c.remaining() {
            return Err(invalid(what, "query length exceeds the option length"));
        }
        queries.push(c.string(len)?);
    }
    c.end()?;
    Ok(MetaQuery { export, queries })
}

/// Decodes the payload of option `option`. An `Err` is answered `ERR_INVALID`; the payload has
/// already been consumed from the stream, so the session stays in sync.
pub fn decode_option(option: u32, payload: &[u8]) -> Result<ClientOption, ProtoError> {
    Ok(match option {
        OPT_EXPORT_NAME => {
            ClientOption::ExportName(check_string("EXPORT_NAME", payload)?.to_owned())
        }
        // ABORT's payload is ignored, as the spec asks.
        OPT_ABORT => ClientOption::Abort,
        OPT_LIST => {
            no_payload("LIST", payload)?;
            ClientOption::List
        }
        OPT_STARTTLS => {
            no_payload("STARTTLS", payload)?;
            ClientOption::StartTls
        }
        OPT_INFO => ClientOption::Info(decode_export_query("INFO", payload)?),
        OPT_GO => ClientOption::Go(decode_export_query("GO", payload)?),
        OPT_STRUCTURED_REPLY => {
            no_payload("STRUCTURED_REPLY", payload)?;
            ClientOption::StructuredReply
        }
        OPT_LIST_META_CONTEXT => {
            ClientOption::ListMetaContext(decode_meta_query("LIST_META_CONTEXT", payload)?)
        }
        OPT_SET_META_CONTEXT => {
            ClientOption::SetMetaContext(decode_meta_query("SET_META_CONTEXT", payload)?)
        }
        OPT_EXTENDED_HEADERS => {
            no_payload("EXTENDED_HEADERS", payload)?;
            ClientOption::ExtendedHeaders
        }
        other => ClientOption::Unknown { option: other, data: payload.to_vec() },
    })
}

fn put_export_query(q: &ExportQuery, out: &mut Vec<u8>) {
    out.put_u32(len32(q.name.len()));
    out.extend_from_slice(q.name.as_bytes());
    out.put_u16(u16::try_from(q.info.len()).unwrap_or(u16::MAX));
    for &i in q.info.iter().take(u16::MAX as usize) {
        out.put_u16(i);
    }
}

fn put_meta_query(q: &MetaQuery, out: &mut Vec<u8>) {
    out.put_u32(len32(q.export.len()));
    out.extend_from_slice(q.export.as_bytes());
    out.put_u32(len32(q.queries.len()));
    for s in &q.queries {
        out.put_u32(len32(s.len()));
        out.extend_from_slice(s.as_bytes());
    }
}

/// Encodes a whole option (header and payload), as a client sends it.
pub fn encode_option(opt: &ClientOption) -> Vec<u8> {
    let mut payload = Vec::new();
    match opt {
        ClientOption::ExportName(name) => payload.extend_from_slice(name.as_bytes()),
        ClientOption::Info(q) | ClientOption::Go(q) => put_export_query(q, &mut payload),
        ClientOption::ListMetaContext(q) | ClientOption::SetMetaContext(q) => {
            put_meta_query(q, &mut payload)
        }
        ClientOption::Unknown { data, .. } => payload.extend_from_slice(data),
        ClientOption::Abort
        | ClientOption::List
        | ClientOption::StartTls
        | ClientOption::StructuredReply
        | ClientOption::ExtendedHeaders => {}
    }
    let mut out = Vec::with_capacity(OPTION_HEADER_LEN + payload.len());
    out.put_u64(IHAVEOPT);
    out.put_u32(opt.code());
    out.put_u32(len32(payload.len()));
    out.extend_from_slice(&payload);
    out
}

/// One `NBD_REP_INFO` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfoItem {
    Export { size: u64, flags: u16 },
    Name(String),
    Description(String),
    BlockSize { minimum: u32, preferred: u32, maximum: u32 },
}

/// A server reply to an option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionReply {
    Ack,
    Server {
        name: String,
        description: String,
    },
    Info(InfoItem),
    MetaContext {
        id: u32,
        name: String,
    },
    /// Any `NBD_REP_ERR_*` (bit 31 set) with its human-readable message.
    Error {
        code: u32,
        message: String,
    },
}

/// Appends one option reply (header and payload) to `out`.
pub fn encode_option_reply(option: u32, reply: &OptionReply, out: &mut Vec<u8>) {
    let mut p = Vec::new();
    let kind = match reply {
        OptionReply::Ack => REP_ACK,
        OptionReply::Server { name, description } => {
            p.put_u32(len32(name.len()));
            p.extend_from_slice(name.as_bytes());
            p.extend_from_slice(description.as_bytes());
            REP_SERVER
        }
        OptionReply::Info(item) => {
            match item {
                InfoItem::Export { size, flags } => {
                    p.put_u16(INFO_EXPORT);
                    p.put_u64(*size);
                    p.put_u16(*flags);
                }
                InfoItem::Name(n) => {
                    p.put_u16(INFO_NAME);
                    p.extend_from_slice(n.as_bytes());
                }
                InfoItem::Description(d) => {
                    p.put_u16(INFO_DESCRIPTION);
                    p.extend_from_slice(d.as_bytes());
                }
                InfoItem::BlockSize { minimum, preferred, maximum } => {
                    p.put_u16(INFO_BLOCK_SIZE);
                    p.put_u32(*minimum);
                    p.put_u32(*preferred);
                    p.put_u32(*maximum);
                }
            }
            REP_INFO
        }
        OptionReply::MetaContext { id, name } => {
            p.put_u32(*id);
            p.extend_from_slice(name.as_bytes());
            REP_META_CONTEXT
        }
        OptionReply::Error { code, message } => {
            p.extend_from_slice(message.as_bytes());
            *code
        }
    };
    out.put_u64(OPT_REPLY_MAGIC);
    out.put_u32(option);
    out.put_u32(kind);
    out.put_u32(len32(p.len()));
    out.extend_from_slice(&p);
}

/// An option reply's fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    pub option: u32,
    pub kind: u32,
    pub len: u32,
}

pub fn decode_option_reply_header(b: &[u8]) -> Result<OptionReplyHeader, ProtoError> {
    let mut c = Cursor::new(b, "option reply header");
    let magic = c.u64()?;
    if magic != OPT_REPLY_MAGIC {
        return Err(ProtoError::BadMagic { what: "option reply", found: magic });
    }
    let h = OptionReplyHeader { option: c.u32()?, kind: c.u32()?, len: c.u32()? };
    c.end()?;
    Ok(h)
}

/// Decodes an option reply payload of type `kind` (client side; used by tests and tools).
pub fn decode_option_reply(kind: u32, payload: &[u8]) -> Result<OptionReply, ProtoError> {
    let what = "option reply";
    let mut c = Cursor::new(payload, what);
    let r = match kind {
        REP_ACK => OptionReply::Ack,
        REP_SERVER => {
            let n = c.u32()? as usize;
            let name = c.string(n)?;
            let description = check_string(what, c.rest())?.to_owned();
            OptionReply::Server { name, description }
        }
        REP_INFO => OptionReply::Info(match c.u16()? {
            INFO_EXPORT => InfoItem::Export { size: c.u64()?, flags: c.u16()? },
            INFO_NAME => InfoItem::Name(check_string(what, c.rest())?.to_owned()),
            INFO_DESCRIPTION => InfoItem::Description(check_string(what, c.rest())?.to_owned()),
            INFO_BLOCK_SIZE => {
                InfoItem::BlockSize { minimum: c.u32()?, preferred: c.u32()?, maximum: c.u32()? }
            }
            other => return Err(invalid(what, format!("unknown info type {other}"))),
        }),
        REP_META_CONTEXT => {
            let id = c.u32()?;
            OptionReply::MetaContext { id, name: check_string(what, c.rest())?.to_owned() }
        }
        code if code & 0x8000_0000 != 0 => {
            OptionReply::Error { code, message: check_string(what, c.rest())?.to_owned() }
        }
        other => return Err(invalid(what, format!("unknown reply type {other:#x}"))),
    };
    c.end()?;
    Ok(r)
}

/// The reply to a successful `EXPORT_NAME`: size, flags, and 124 zero bytes unless the client
/// asked for NO_ZEROES.
pub fn encode_export_name_reply(size: u64, flags: u16, no_zeroes: bool, out: &mut Vec<u8>) {
    out.put_u64(size);
    out.put_u16(flags);
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
}

pub fn decode_export_name_reply(b: &[u8]) -> Result<(u64, u16), ProtoError> {
    let mut c = Cursor::new(b, "EXPORT_NAME reply");
    let size = c.u64()?;
    let flags = c.u16()?;
    let rest = c.rest();
    if !(rest.is_empty() || rest.len() == 124 && rest.iter().all(|&x| x == 0)) {
        return Err(invalid("EXPORT_NAME reply", "padding must be absent or 124 zero bytes"));
    }
    Ok((size, flags))
}
