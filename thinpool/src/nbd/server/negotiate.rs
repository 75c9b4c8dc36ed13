//! The fixed-newstyle handshake as a server runs it: greeting, client flags, then options
//! until EXPORT_NAME, a successful GO, ABORT or a disconnect.
//!
//! Bounds (see [`super`]): an option longer than `MAX_OPTION_LEN` or more than
//! `MAX_OPTIONS` options end the connection, and so does the handshake deadline, which is one
//! deadline for the whole handshake: every socket call gets only the time that is left, so a
//! client trickling a byte at a time is dropped on time. Nothing is read past an option's
//! declared length, and nothing past the final ACK of GO (over TLS, rustls may hold records
//! read past it; they go to transmission with the session).
//!
//! STARTTLS (NBD spec, "TLS support"): ACK in plaintext, then the TLS handshake on the same
//! socket, after which everything negotiated before is forgotten (CVE-2021-3716 was plaintext
//! state surviving into the TLS session). Under [`TlsMode::Require`] only STARTTLS and ABORT
//! are served before TLS: other options get `ERR_TLS_REQD`, EXPORT_NAME a disconnect.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use thiserror::Error;

use rustls::ServerConnection;

use super::tls::TlsMode;
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
    #[error("i/o")]
    Io(#[from] io::Error),
    #[error("protocol")]
    Proto(#[from] ProtoError),
    #[error("{0}")]
    Refused(String),
    #[error("TLS: {0}")]
    Tls(rustls::Error),
}

/// The socket with the handshake's deadline: every call waits at most for the time left.
struct Deadline<'a> {
    sock: &'a Sock,
    deadline: Instant,
}

impl Deadline<'_> {
    fn arm(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "handshake deadline passed"));
        }
        Ok(left)
    }

    fn timed_out(e: io::Error) -> io::Error {
        // SO_RCVTIMEO/SO_SNDTIMEO expiry shows up as EAGAIN.
        if e.kind() == io::ErrorKind::WouldBlock {
            io::Error::new(io::ErrorKind::TimedOut, "handshake deadline passed")
        } else {
            e
        }
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.set_read_timeout(Some(self.arm()?))?;
        (&mut { self.sock }).read(buf).map_err(Self::timed_out)
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.set_write_timeout(Some(self.arm()?))?;
        (&mut { self.sock }).write(buf).map_err(Self::timed_out)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The handshake's channel: the socket, or the TLS session on it after STARTTLS.
enum Channel<'a> {
    Plain(Deadline<'a>),
    Tls(Box<rustls::StreamOwned<ServerConnection, Deadline<'a>>>),
}

struct Conn<'a> {
    chan: Channel<'a>,
}

impl<'a> Conn<'a> {
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match &mut self.chan {
            Channel::Plain(d) => d.read_exact(buf),
            Channel::Tls(t) => t.read_exact(buf),
        }
    }

    fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.chan {
            Channel::Plain(d) => d.write_all(buf),
            Channel::Tls(t) => {
                t.write_all(buf)?;
                // StreamOwned encrypts on write; make sure the records are on the wire.
                while t.conn.wants_write() {
                    t.conn.write_tls(&mut t.sock)?;
                }
                Ok(())
            }
        }
    }

    fn reply(&mut self, option: u32, r: &OptionReply) -> io::Result<()> {
        let mut out = Vec::new();
        encode_option_reply(option, r, &mut out);
        self.send(&out)
    }

    fn error(&mut self, option: u32, code: u32, message: &str) -> io::Result<()> {
        self.reply(option, &OptionReply::Error { code, message: message.to_owned() })
    }

    fn is_tls(&self) -> bool {
        matches!(self.chan, Channel::Tls(_))
    }

    /// Runs the TLS handshake on the plaintext channel (after STARTTLS's ACK).
    fn start_tls(&mut self, config: Arc<rustls::ServerConfig>) -> Result<(), HandshakeError> {
        let Channel::Plain(d) = &mut self.chan else {
            return Err(HandshakeError::Refused("TLS is already on".into()));
        };
        let mut d = Deadline { sock: d.sock, deadline: d.deadline };
        let mut tls = ServerConnection::new(config).map_err(HandshakeError::Tls)?;
        while tls.is_handshaking() {
            tls.complete_io(&mut d).map_err(|e| match e.kind() {
                io::ErrorKind::InvalidData => HandshakeError::Refused(format!("TLS: {e}")),
                _ => HandshakeError::Io(e),
            })?;
        }
        self.chan = Channel::Tls(Box::new(rustls::StreamOwned::new(tls, d)));
        Ok(())
    }

    /// The TLS session, if any, for the transmission phase.
    fn into_tls(self) -> Option<ServerConnection> {
        match self.chan {
            Channel::Plain(_) => None,
            Channel::Tls(t) => Some(t.conn),
        }
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

/// The export a client asked for, if it exists and the export policy lets this peer see it.
fn resolve(shared: &Shared, peer: Option<IpAddr>, name: &str) -> Option<(String, Arc<dyn Export>)> {
    let name = if name.is_empty() { shared.catalog.default_name()? } else { name.to_owned() };
    if !shared.visible(&name, peer) {
        return None;
    }
    let export = shared.catalog.open(&name)?;
    Some((name, export))
}

/// What a finished handshake hands to transmission.
pub(crate) struct Handshake {
    pub neg: Negotiated,
    /// The TLS session, when the client upgraded with STARTTLS.
    pub tls: Option<ServerConnection>,
}

/// Runs the handshake; `Ok(None)` means the client left cleanly (ABORT or EOF between options).
pub(crate) fn negotiate(
    shared: &Shared,
    id: u64,
    sock: &Sock,
    peer: Option<IpAddr>,
    deadline: Instant,
) -> Result<Option<Handshake>, HandshakeError> {
    let mut c = Conn { chan: Channel::Plain(Deadline { sock, deadline }) };
    c.send(&encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))?;
    let mut cf = [0u8; 4];
    c.read_exact(&mut cf)?;
    let client_flags = u32::from_be_bytes(cf);
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(HandshakeError::Refused(format!("unknown client flags {client_flags:#x}")));
    }
    let fixed = client_flags & FLAG_C_FIXED_NEWSTYLE != 0;
    let mut st = State { no_zeroes: client_flags & FLAG_C_NO_ZEROES != 0, ..State::default() };
    let require_tls = shared.opts.tls.as_ref().is_some_and(|t| t.mode == TlsMode::Require);

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
        if require_tls && !c.is_tls() {
            match h.option {
                OPT_STARTTLS | OPT_ABORT => {}
                OPT_EXPORT_NAME => {
                    return Err(HandshakeError::Refused("EXPORT_NAME before TLS".into()));
                }
                _ => {
                    c.error(h.option, REP_ERR_TLS_REQD, "TLS is required")?;
                    continue;
                }
            }
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
        if let Some(neg) = handle_option(shared, id, &mut c, &mut st, peer, opt)? {
            return Ok(Some(Handshake { neg, tls: c.into_tls() }));
        }
        if st.aborted {
            return Ok(None);
        }
    }
}

/// The server was full and took this connection's slot while its handshake ran.
fn evicted() -> HandshakeError {
    HandshakeError::Refused("evicted: the server is full".into())
}

/// Handles one decoded option; returns the negotiated session when transmission starts.
fn handle_option(
    shared: &Shared,
    id: u64,
    c: &mut Conn<'_>,
    st: &mut State,
    peer: Option<IpAddr>,
    opt: ClientOption,
) -> Result<Option<Negotiated>, HandshakeError> {
    let code = opt.code();
    match opt {
        ClientOption::ExportName(name) => {
            if st.extended {
                return Err(HandshakeError::Refused("EXPORT_NAME after EXTENDED_HEADERS".into()));
            }
            let Some((name, export)) = resolve(shared, peer, &name) else {
                // The only error signal EXPORT_NAME has is a hard disconnect.
                return Err(HandshakeError::Refused(format!("unknown export {name:?}")));
            };
            let ro = shared.is_read_only(&name, export.as_ref());
            let flags = transmission_flags(ro, st.structured);
            let mut out = Vec::new();
            encode_export_name_reply(export.size(), flags, st.no_zeroes, &mut out);
            if !shared.start_transmission(id) {
                return Err(evicted());
            }
            c.send(&out)?;
            return Ok(Some(session(st, name, export, ro, flags, None)));
        }
        ClientOption::Abort => {
            // The client may hang up without reading the ACK.
            let _ = c.reply(code, &OptionReply::Ack);
            st.aborted = true;
        }
        ClientOption::List => {
            for e in shared.catalog.list().into_iter().filter(|e| shared.visible(&e.name, peer)) {
                c.reply(code, &OptionReply::Server { name: e.name, description: e.description })?;
            }
            c.reply(code, &OptionReply::Ack)?;
        }
        ClientOption::StartTls => match shared.opts.tls.as_ref().filter(|t| t.mode != TlsMode::Off)
        {
            None => c.error(code, REP_ERR_POLICY, "TLS is not configured")?,
            Some(_) if c.is_tls() => c.error(code, REP_ERR_INVALID, "TLS is already on")?,
            Some(t) => {
                c.reply(code, &OptionReply::Ack)?;
                c.start_tls(t.config.clone())?;
                // Nothing negotiated in plaintext survives into the TLS session.
                *st = State { no_zeroes: st.no_zeroes, ..State::default() };
            }
        },
        ClientOption::Info(q) | ClientOption::Go(q) => {
            let go = code == OPT_GO;
            let Some((name, export)) = resolve(shared, peer, &q.name) else {
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
            if go && !shared.start_transmission(id) {
                return Err(evicted());
            }
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
            let Some((resolved, export)) = resolve(shared, peer, &q.export) else {
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
