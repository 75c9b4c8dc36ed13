//! The fixed-newstyle handshake as a server runs it: greeting, client flags, then options
//! until EXPORT_NAME, a successful GO, ABORT or a disconnect.
//!
//! Bounds (see [`super`]): an option longer than `MAX_OPTION_LEN` or more than
//! `MAX_OPTIONS` options end the connection, and so does the handshake deadline. Nothing is
//! read past an option's declared length, and nothing past the final ACK of GO.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use thiserror::Error;

use super::{Shared, Sock, MAX_OPTIONS, MAX_OPTION_LEN};
use crate::export::{BlockSize, Export};
use crate::nbd::proto::msg::HeaderMode;
use crate::nbd::proto::opt::*;
use crate::nbd::proto::wire::*;

use super::contexts::{self, Selected};
pub use super::contexts::{BASE_ALLOCATION, BASE_ALLOCATION_ID};

/// What the handshake settled for the transmission phase.
pub(crate) struct Negotiated {
    pub name: String,
    pub export: Arc<dyn Export>,
    pub read_only: bool,
    pub mode: HeaderMode,
    pub structured: bool,
    /// The metadata contexts selected for this export, in id order of selection.
    pub contexts: Vec<Selected>,
    pub flags: u16,
    /// Block-size constraints, enforced only if the client asked for them.
    pub block_size: Option<BlockSize>,
}

impl Negotiated {
    /// The kernel's view: compact headers, simple replies, no contexts.
    pub fn kernel(export: Arc<dyn Export>, read_only: bool) -> Self {
        Self {
            name: String::new(),
            export,
            read_only,
            mode: HeaderMode::Compact,
            structured: false,
            contexts: Vec::new(),
            flags: transmission_flags(read_only, false),
            block_size: None,
        }
    }
}

/// Transmission flags for an export.
pub fn transmission_flags(read_only: bool, structured: bool) -> u16 {
    let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_CAN_MULTI_CONN | TF_SEND_CACHE;
    if read_only {
        f |= TF_READ_ONLY;
    } else {
        f |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES | TF_SEND_FAST_ZERO;
    }
    if structured {
        f |= TF_SEND_DF;
    }
    f
}

#[derive(Debug, Error)]
pub(crate) enum HandshakeError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("protocol: {0}")]
    Proto(#[from] ProtoError),
    #[error("{0}")]
    Refused(String),
}

struct Conn<'a> {
    sock: &'a Sock,
    deadline: Instant,
}

impl Conn<'_> {
    fn arm(&self) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "handshake deadline passed"));
        }
        self.sock.set_read_timeout(Some(left))?;
        self.sock.set_write_timeout(Some(left))
    }

    fn read_exact(&self, buf: &mut [u8]) -> io::Result<()> {
        self.arm()?;
        (&mut &*self.sock).read_exact(buf)
    }

    fn send(&self, buf: &[u8]) -> io::Result<()> {
        self.arm()?;
        (&mut &*self.sock).write_all(buf)
    }

    fn reply(&self, option: u32, r: &OptionReply) -> io::Result<()> {
        let mut out = Vec::new();
        encode_option_reply(option, r, &mut out);
        self.send(&out)
    }

    fn error(&self, option: u32, code: u32, message: &str) -> io::Result<()> {
        self.reply(option, &OptionReply::Error { code, message: message.to_owned() })
    }
}

/// Negotiation state carried between options.
#[derive(Default)]
struct State {
    no_zeroes: bool,
    structured: bool,
    extended: bool,
    /// Export name the last SET_META_CONTEXT selected contexts for, and those contexts.
    meta: Option<(String, Vec<Selected>)>,
    aborted: bool,
}

fn resolve(shared: &Shared, name: &str) -> Option<(String, Arc<dyn Export>)> {
    let name = if name.is_empty() { shared.catalog.default_name()? } else { name.to_owned() };
    let export = shared.catalog.open(&name)?;
    Some((name, export))
}

/// Runs the handshake; `Ok(None)` means the client left cleanly (ABORT or EOF between options).
pub(crate) fn negotiate(
    shared: &Shared,
    sock: &Sock,
    deadline: Instant,
) -> Result<Option<Negotiated>, HandshakeError> {
    let c = Conn { sock, deadline };
    c.send(&encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))?;
    let mut cf = [0u8; 4];
    c.read_exact(&mut cf)?;
    let client_flags = u32::from_be_bytes(cf);
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(HandshakeError::Refused(format!("unknown client flags {client_flags:#x}")));
    }
    let fixed = client_flags & FLAG_C_FIXED_NEWSTYLE != 0;
    let mut st = State { no_zeroes: client_flags & FLAG_C_NO_ZEROES != 0, ..State::default() };

    let mut payload = Vec::new();
    let mut count = 0u32;
    loop {
        let mut hdr = [0u8; OPTION_HEADER_LEN];
        match c.read_exact(&mut hdr) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let h = decode_option_header(&hdr, MAX_OPTION_LEN)?;
        count += 1;
        if count > MAX_OPTIONS {
            return Err(HandshakeError::Refused(format!("more than {MAX_OPTIONS} options")));
        }
        payload.clear();
        payload.resize(h.len as usize, 0);
        c.read_exact(&mut payload)?;
        if !fixed && h.option != OPT_EXPORT_NAME {
            return Err(HandshakeError::Refused(
                "option other than EXPORT_NAME without fixed newstyle".into(),
            ));
        }
        if shared.shutting_down.load(Ordering::SeqCst) {
            c.error(h.option, REP_ERR_SHUTDOWN, "server is shutting down")?;
            continue;
        }
        let opt = match decode_option(h.option, &payload) {
            Ok(o) => o,
            Err(e) if h.option == OPT_EXPORT_NAME => {
                return Err(HandshakeError::Refused(format!("bad EXPORT_NAME: {e}")));
            }
            Err(e) => {
                c.error(h.option, REP_ERR_INVALID, &e.to_string())?;
                continue;
            }
        };
        if let Some(n) = handle_option(shared, &c, &mut st, opt)? {
            return Ok(Some(n));
        }
        if st.aborted {
            return Ok(None);
        }
    }
}

/// Handles one decoded option; returns the negotiated session when transmission starts.
fn handle_option(
    shared: &Shared,
    c: &Conn<'_>,
    st: &mut State,
    opt: ClientOption,
) -> Result<Option<Negotiated>, HandshakeError> {
    let code = opt.code();
    match opt {
        ClientOption::ExportName(name) => {
            if st.extended {
                return Err(HandshakeError::Refused("EXPORT_NAME after EXTENDED_HEADERS".into()));
            }
            let Some((name, export)) = resolve(shared, &name) else {
                // The only error signal EXPORT_NAME has is a hard disconnect.
                return Err(HandshakeError::Refused(format!("unknown export {name:?}")));
            };
            let ro = shared.is_read_only(&name, export.as_ref());
            let flags = transmission_flags(ro, st.structured);
            let mut out = Vec::new();
            encode_export_name_reply(export.size(), flags, st.no_zeroes, &mut out);
            c.send(&out)?;
            return Ok(Some(session(st, name, export, ro, flags, None)));
        }
        ClientOption::Abort => {
            // The client may hang up without reading the ACK.
            let _ = c.reply(code, &OptionReply::Ack);
            st.aborted = true;
        }
        ClientOption::List => {
            for e in shared.catalog.list() {
                c.reply(code, &OptionReply::Server { name: e.name, description: e.description })?;
            }
            c.reply(code, &OptionReply::Ack)?;
        }
        ClientOption::StartTls => c.error(code, REP_ERR_POLICY, "TLS is not configured")?,
        ClientOption::Info(q) | ClientOption::Go(q) => {
            let go = code == OPT_GO;
            let Some((name, export)) = resolve(shared, &q.name) else {
                c.error(code, REP_ERR_UNKNOWN, "no such export")?;
                return Ok(None);
            };
            let ro = shared.is_read_only(&name, export.as_ref());
            let flags = transmission_flags(ro, st.structured);
            let bs = export.block_size();
            c.reply(code, &OptionReply::Info(InfoItem::Export { size: export.size(), flags }))?;
            if q.info.contains(&INFO_NAME) {
                c.reply(code, &OptionReply::Info(InfoItem::Name(name.clone())))?;
            }
            if q.info.contains(&INFO_DESCRIPTION) {
                let d = shared
                    .catalog
                    .list()
                    .into_iter()
                    .find(|e| e.name == name)
                    .map(|e| e.description)
                    .unwrap_or_default();
                if !d.is_empty() {
                    c.reply(code, &OptionReply::Info(InfoItem::Description(d)))?;
                }
            }
            let item = InfoItem::BlockSize {
                minimum: bs.minimum,
                preferred: bs.preferred,
                maximum: bs.maximum,
            };
            c.reply(code, &OptionReply::Info(item))?;
            c.reply(code, &OptionReply::Ack)?;
            if go {
                let asked = q.info.contains(&INFO_BLOCK_SIZE).then_some(bs);
                return Ok(Some(session(st, name, export, ro, flags, asked)));
            }
        }
        ClientOption::StructuredReply => {
            if st.extended {
                c.error(code, REP_ERR_EXT_HEADER_REQD, "extended headers are already on")?;
            } else if st.structured {
                c.error(code, REP_ERR_INVALID, "structured replies are already on")?;
            } else {
                st.structured = true;
                c.reply(code, &OptionReply::Ack)?;
            }
        }
        ClientOption::ExtendedHeaders => {
            if st.extended {
                c.error(code, REP_ERR_INVALID, "extended headers are already on")?;
            } else {
                st.extended = true;
                st.structured = true;
                c.reply(code, &OptionReply::Ack)?;
            }
        }
        ClientOption::ListMetaContext(q) | ClientOption::SetMetaContext(q) => {
            let set = code == OPT_SET_META_CONTEXT;
            if set {
                // SET replaces the selection even when it fails.
                st.meta = None;
            }
            if !st.structured {
                c.error(code, REP_ERR_INVALID, "negotiate structured replies first")?;
                return Ok(None);
            }
            let Some((resolved, export)) = resolve(shared, &q.export) else {
                c.error(code, REP_ERR_UNKNOWN, "no such export")?;
                return Ok(None);
            };
            // LIST: no queries or a namespace lists all of it; SET: exact names select.
            if set {
                let chosen = contexts::select(export.as_ref(), &q.queries);
                for (name, s) in &chosen {
                    c.reply(code, &OptionReply::MetaContext { id: s.id, name: name.clone() })?;
                }
                if !chosen.is_empty() {
                    st.meta = Some((resolved, chosen.into_iter().map(|(_, s)| s).collect()));
                }
            } else {
                for name in contexts::list(export.as_ref(), &q.queries) {
                    c.reply(code, &OptionReply::MetaContext { id: 0, name })?;
                }
            }
            c.reply(code, &OptionReply::Ack)?;
        }
        ClientOption::Unknown { .. } => c.error(code, REP_ERR_UNSUP, "unsupported option")?,
    }
    Ok(None)
}

fn session(
    st: &State,
    name: String,
    export: Arc<dyn Export>,
    read_only: bool,
    flags: u16,
    block_size: Option<BlockSize>,
) -> Negotiated {
    // A selection counts only for the export finally chosen (empty name = default export).
    let contexts = match &st.meta {
        Some((n, sel)) if st.structured && *n == name => sel.clone(),
        _ => Vec::new(),
    };
    Negotiated {
        name,
        export,
        read_only,
        mode: if st.extended { HeaderMode::Extended } else { HeaderMode::Compact },
        structured: st.structured,
        contexts,
        flags,
        block_size,
    }
}
