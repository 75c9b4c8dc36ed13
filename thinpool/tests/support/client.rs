//! A small raw NBD client built on the crate's codecs, for tests that need exact control over
//! the bytes (things libnbd refuses to send).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use thinpool::nbd::proto::msg::*;
use thinpool::nbd::proto::opt::*;
use thinpool::nbd::proto::wire::*;

/// A client socket of either family.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(b),
            Stream::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct Client {
    pub s: Stream,
    pub mode: HeaderMode,
    pub structured: bool,
    pub size: u64,
    pub flags: u16,
    next_cookie: u64,
}

/// Everything the server answered to one request.
#[derive(Debug, Default)]
pub struct Reply {
    pub cookie: u64,
    pub error: u32,
    /// Data of a simple READ reply, or READ data reassembled from chunks (holes as zeros).
    pub data: Vec<u8>,
    pub chunks: Vec<Chunk>,
}

/// Opens a TCP connection and reads the greeting; returns the stream after sending flags.
pub fn hello(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    greet(&mut s);
    s
}

fn greet<S: Read + Write>(s: &mut S) {
    let mut g = [0u8; GREETING_LEN];
    s.read_exact(&mut g).expect("greeting");
    assert_eq!(decode_greeting(&g).unwrap(), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes()).unwrap();
}

/// Sends an option and collects replies up to and including the final one.
pub fn option<S: Read + Write>(s: &mut S, o: &ClientOption) -> Vec<OptionReply> {
    s.write_all(&encode_option(o)).unwrap();
    read_option_replies(s)
}

pub fn read_option_replies<S: Read>(s: &mut S) -> Vec<OptionReply> {
    let mut v = Vec::new();
    loop {
        let mut h = [0u8; OPTION_REPLY_HEADER_LEN];
        s.read_exact(&mut h).expect("option reply header");
        let h = decode_option_reply_header(&h).unwrap();
        let mut p = vec![0u8; h.len as usize];
        s.read_exact(&mut p).unwrap();
        let r = decode_option_reply(h.kind, &p).unwrap();
        let last = matches!(r, OptionReply::Ack | OptionReply::Error { .. });
        v.push(r);
        if last {
            return v;
        }
    }
}

/// True if the server closed the connection (EOF or reset) within the read timeout.
pub fn closed<S: Read>(s: &mut S) -> bool {
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

impl Client {
    /// Handshake with GO on `name`; optionally structured replies + `base:allocation`, and
    /// extended headers.
    pub fn connect(addr: SocketAddr, name: &str, structured: bool, extended: bool) -> Client {
        let s = hello(addr);
        s.set_nodelay(true).unwrap();
        Self::handshake(Stream::Tcp(s), name, structured, extended)
    }

    pub fn connect_unix(path: &Path, name: &str, structured: bool, extended: bool) -> Client {
        let mut s = UnixStream::connect(path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        greet(&mut s);
        Self::handshake(Stream::Unix(s), name, structured, extended)
    }

    /// A client on a stream whose handshake (ending in GO) the caller ran itself.
    pub fn after_handshake(s: Stream, mode: HeaderMode, size: u64, flags: u16) -> Client {
        Client { s, mode, structured: true, size, flags, next_cookie: 1 }
    }

    fn handshake(mut s: Stream, name: &str, structured: bool, extended: bool) -> Client {
        if extended {
            assert_eq!(option(&mut s, &ClientOption::ExtendedHeaders), [OptionReply::Ack]);
        } else if structured {
            assert_eq!(option(&mut s, &ClientOption::StructuredReply), [OptionReply::Ack]);
        }
        if structured || extended {
            let q = MetaQuery { export: name.into(), queries: vec!["base:allocation".into()] };
            let r = option(&mut s, &ClientOption::SetMetaContext(q));
            assert_eq!(r.len(), 2, "{r:?}");
        }
        let r = option(&mut s, &ClientOption::Go(ExportQuery { name: name.into(), info: vec![] }));
        assert_eq!(r.last(), Some(&OptionReply::Ack), "GO failed: {r:?}");
        let (size, flags) = r
            .iter()
            .find_map(|x| match x {
                OptionReply::Info(InfoItem::Export { size, flags }) => Some((*size, *flags)),
                _ => None,
            })
            .expect("NBD_INFO_EXPORT");
        Client {
            s,
            mode: if extended { HeaderMode::Extended } else { HeaderMode::Compact },
            structured: structured || extended,
            size,
            flags,
            next_cookie: 1,
        }
    }

    pub fn send(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u64,
        payload: &[u8],
    ) -> u64 {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let mut flags = flags;
        if self.mode == HeaderMode::Extended && !payload.is_empty() {
            flags |= CMD_FLAG_PAYLOAD_LEN;
        }
        let mut out = Vec::new();
        encode_request(self.mode, &Request { flags, command, cookie, offset, length }, &mut out);
        out.extend_from_slice(payload);
        self.s.write_all(&out).unwrap();
        cookie
    }

    /// Reads one complete reply (a simple reply, or chunks until DONE). `read_len` is the
    /// length of the READ this reply answers, if it is one (needed to parse simple replies).
    pub fn recv(&mut self, read_len: impl Fn(u64) -> Option<usize>) -> Reply {
        let mut r = Reply::default();
        loop {
            let mut m = [0u8; 4];
            self.s.read_exact(&mut m).expect("reply magic");
            let hl = reply_header_len(m).unwrap();
            let mut h = vec![0u8; hl];
            h[..4].copy_from_slice(&m);
            self.s.read_exact(&mut h[4..]).unwrap();
            match decode_reply_header(&h).unwrap() {
                ReplyHeader::Simple { error, cookie } => {
                    r.cookie = cookie;
                    r.error = error;
                    if error == 0 {
                        if let Some(n) = read_len(cookie) {
                            r.data = vec![0u8; n];
                            self.s.read_exact(&mut r.data).unwrap();
                        }
                    }
                    return r;
                }
                ReplyHeader::Chunk { flags, kind, cookie, length, .. } => {
                    r.cookie = cookie;
                    let mut p = vec![0u8; length as usize];
                    self.s.read_exact(&mut p).unwrap();
                    let c = decode_chunk(kind, &p).unwrap();
                    if let Chunk::Error { error, .. } | Chunk::ErrorOffset { error, .. } = &c {
                        r.error = *error;
                    }
                    r.chunks.push(c);
                    if flags & REPLY_FLAG_DONE != 0 {
                        return r;
                    }
                }
            }
        }
    }

    /// Reassembles READ data at `offset` of `len` bytes from structured chunks.
    pub fn assemble(r: &Reply, offset: u64, len: usize) -> Vec<u8> {
        if !r.data.is_empty() {
            return r.data.clone();
        }
        let mut v = vec![0xEEu8; len];
        for c in &r.chunks {
            match c {
                Chunk::OffsetData { offset: o, data } => {
                    let s = (*o - offset) as usize;
                    v[s..s + data.len()].copy_from_slice(data);
                }
                Chunk::OffsetHole { offset: o, len: n } => {
                    let s = (*o - offset) as usize;
                    v[s..s + *n as usize].fill(0);
                }
                _ => {}
            }
        }
        v
    }

    pub fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, u32> {
        self.send(CMD_READ, 0, offset, len as u64, &[]);
        let r = self.recv(|_| Some(len));
        if r.error != 0 {
            return Err(r.error);
        }
        Ok(Self::assemble(&r, offset, len))
    }

    pub fn write(&mut self, offset: u64, data: &[u8], flags: u16) -> u32 {
        self.send(CMD_WRITE, flags, offset, data.len() as u64, data);
        self.recv(|_| None).error
    }

    pub fn cmd(&mut self, command: u16, flags: u16, offset: u64, length: u64) -> Reply {
        self.send(command, flags, offset, length, &[]);
        self.recv(|_| None)
    }

    pub fn disconnect(mut self) {
        let mut out = Vec::new();
        encode_request(self.mode, &Request { command: CMD_DISC, ..Default::default() }, &mut out);
        let _ = self.s.write_all(&out);
        assert!(closed(&mut self.s), "server must close after DISC");
    }
}
