//! Raw-socket protocol tests: handshake rules, hardening limits, error replies, structured and
//! extended replies, pipelining, out-of-order completion and the kernel-style socketpair mode.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use support::client::*;
use support::nbd::*;
use support::wait_for;
use thinpool::export::mem::{MemCatalog, MemExport};
use thinpool::nbd::proto::msg::*;
use thinpool::nbd::proto::opt::*;
use thinpool::nbd::proto::wire::*;
use thinpool::nbd::server::allow::AllowList;
use thinpool::nbd::{Export, ExportResult, Extent, ServerOptions};

const MIB: u64 = 1 << 20;

fn catalog() -> Arc<MemCatalog> {
    let cat = Arc::new(MemCatalog::new());
    cat.insert("vol", "test volume", Arc::new(MemExport::new(64 * MIB)));
    cat.insert("ro", "", Arc::new(MemExport::new(MIB)));
    cat
}

fn server() -> Running {
    let mut opts = ServerOptions::default();
    opts.read_only.insert("ro".into());
    start(catalog(), opts)
}

#[test]
fn handshake_error_replies_keep_the_session_usable() {
    let srv = server();
    let mut s = hello(srv.addr);
    // Unknown option: ERR_UNSUP after consuming exactly its payload.
    let r = option(&mut s, &ClientOption::Unknown { option: 0x7654321, data: vec![1, 2, 3, 4] });
    assert!(matches!(r[..], [OptionReply::Error { code: REP_ERR_UNSUP, .. }]), "{r:?}");
    // LIST with a payload.
    let mut raw = Vec::new();
    raw.put_u64(IHAVEOPT);
    raw.put_u32(OPT_LIST);
    raw.put_u32(1);
    raw.push(0);
    s.write_all(&raw).unwrap();
    let r = read_option_replies(&mut s);
    assert!(matches!(r[..], [OptionReply::Error { code: REP_ERR_INVALID, .. }]), "{r:?}");
    // GO whose info count disagrees with the length: ERR_INVALID, nothing read past optlen.
    let mut raw = Vec::new();
    raw.put_u64(IHAVEOPT);
    raw.put_u32(OPT_GO);
    raw.put_u32(4 + 3 + 2);
    raw.put_u32(3);
    raw.extend_from_slice(b"vol");
    raw.put_u16(5);
    s.write_all(&raw).unwrap();
    let r = read_option_replies(&mut s);
    assert!(matches!(r[..], [OptionReply::Error { code: REP_ERR_INVALID, .. }]), "{r:?}");
    // Unknown export.
    let r = option(&mut s, &ClientOption::Info(ExportQuery { name: "nope".into(), info: vec![] }));
    assert!(matches!(r[..], [OptionReply::Error { code: REP_ERR_UNKNOWN, .. }]), "{r:?}");
    // SET_META_CONTEXT before structured replies.
    let q = MetaQuery { export: "vol".into(), queries: vec!["base:allocation".into()] };
    let r = option(&mut s, &ClientOption::SetMetaContext(q));
    assert!(matches!(r[..], [OptionReply::Error { code: REP_ERR_INVALID, .. }]), "{r:?}");
    // STARTTLS without TLS.
    let r = option(&mut s, &ClientOption::StartTls);
    assert!(matches!(r[..], [OptionReply::Error { code: REP_ERR_POLICY, .. }]), "{r:?}");
    // Structured replies twice.
    assert_eq!(option(&mut s, &ClientOption::StructuredReply), [OptionReply::Ack]);
    let r = option(&mut s, &ClientOption::StructuredReply);
    assert!(matches!(r[..], [OptionReply::Error { code: REP_ERR_INVALID, .. }]), "{r:?}");
    // LIST_META_CONTEXT with no query lists base:allocation.
    let q = MetaQuery { export: "vol".into(), queries: vec![] };
    let r = option(&mut s, &ClientOption::ListMetaContext(q));
    assert_eq!(r[0], OptionReply::MetaContext { id: 0, name: "base:allocation".into() });
    // INFO with NAME, DESCRIPTION and BLOCK_SIZE.
    let q = ExportQuery {
        name: "vol".into(),
        info: vec![INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE],
    };
    let r = option(&mut s, &ClientOption::Info(q));
    assert!(r.contains(&OptionReply::Info(InfoItem::Name("vol".into()))), "{r:?}");
    assert!(r.contains(&OptionReply::Info(InfoItem::Description("test volume".into()))));
    assert!(r.iter().any(|x| matches!(x, OptionReply::Info(InfoItem::BlockSize { maximum, .. }) if *maximum == MAX_PAYLOAD)));
    // After all that, EXPORT_NAME still works.
    s.write_all(&encode_option(&ClientOption::ExportName("vol".into()))).unwrap();
    let mut rep = [0u8; 10];
    s.read_exact(&mut rep).unwrap();
    let (size, flags) = decode_export_name_reply(&rep).unwrap();
    assert_eq!(size, 64 * MIB);
    assert_ne!(flags & TF_CAN_MULTI_CONN, 0);
    assert_ne!(flags & TF_SEND_DF, 0, "DF is advertised once structured replies are on");
}

#[test]
fn hostile_handshakes_are_dropped_and_others_keep_working() {
    let opts =
        ServerOptions { handshake_timeout: Duration::from_secs(1), ..ServerOptions::default() };
    let srv = start(catalog(), opts);
    // Absurd option length: disconnect without reading it.
    let mut s = hello(srv.addr);
    let mut raw = Vec::new();
    raw.put_u64(IHAVEOPT);
    raw.put_u32(OPT_GO);
    raw.put_u32(0xffff_fff0);
    s.write_all(&raw).unwrap();
    assert!(closed(&mut s), "oversize option must disconnect");
    // Unknown client flags.
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut g = [0u8; GREETING_LEN];
    s.read_exact(&mut g).unwrap();
    s.write_all(&0x8000_0000u32.to_be_bytes()).unwrap();
    assert!(closed(&mut s), "unknown client flags must disconnect");
    // Bad option magic.
    let mut s = hello(srv.addr);
    s.write_all(&[0x55; 16]).unwrap();
    assert!(closed(&mut s));
    // EXPORT_NAME of an unknown export: the only signal is a disconnect.
    let mut s = hello(srv.addr);
    s.write_all(&encode_option(&ClientOption::ExportName("nope".into()))).unwrap();
    assert!(closed(&mut s));
    // Silent client: dropped at the handshake deadline.
    let t0 = Instant::now();
    let mut s = hello(srv.addr);
    assert!(closed(&mut s), "a silent client is dropped");
    assert!(t0.elapsed() < Duration::from_secs(5), "handshake deadline enforced");
    // Too many options.
    let mut s = hello(srv.addr);
    let list = encode_option(&ClientOption::List);
    let mut dropped = false;
    for _ in 0..10_000 {
        if s.write_all(&list).is_err() {
            dropped = true;
            break;
        }
        let mut h = [0u8; OPTION_REPLY_HEADER_LEN];
        // LIST answers two SERVER replies and an ACK.
        let mut ok = true;
        for _ in 0..3 {
            if s.read_exact(&mut h).is_err() {
                ok = false;
                break;
            }
            let len = decode_option_reply_header(&h).unwrap().len as usize;
            let mut p = vec![0; len];
            if s.read_exact(&mut p).is_err() {
                ok = false;
                break;
            }
        }
        if !ok {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "10,000 options must end in a disconnect");
    // A well-behaved client is still served.
    let mut c = Client::connect(srv.addr, "vol", false, false);
    assert_eq!(c.write(0, b"still here", 0), 0);
    assert_eq!(c.read(0, 10).unwrap(), b"still here");
    c.disconnect();
}

#[test]
fn connection_cap_and_allowlist() {
    let opts = ServerOptions { max_connections: 2, ..ServerOptions::default() };
    let srv = start(catalog(), opts);
    let a = Client::connect(srv.addr, "vol", false, false);
    let b = Client::connect(srv.addr, "vol", false, false);
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(closed(&mut s), "third connection is refused");
    a.disconnect();
    b.disconnect();

    let allow = AllowList::parse("10.0.0.0/8,fd00::/8").unwrap();
    let opts = ServerOptions { allow, ..ServerOptions::default() };
    let srv = start(catalog(), opts);
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(closed(&mut s), "127.0.0.1 is not in the allowlist");
    // The unix socket is always allowed.
    let mut u = UnixStream::connect(&srv.sock).unwrap();
    let mut g = [0u8; GREETING_LEN];
    u.read_exact(&mut g).unwrap();
    assert!(decode_greeting(&g).is_ok());
}

#[test]
fn transmission_errors() {
    let srv = server();
    let mut c = Client::connect(srv.addr, "vol", false, false);
    let size = c.size;
    assert_eq!(c.read(size - 512, 1024), Err(EINVAL), "read crossing EOF");
    assert_eq!(c.read(u64::MAX - 10, 100), Err(EINVAL), "overflowing offset");
    assert_eq!(c.write(size, b"x", 0), ENOSPC, "write past EOF");
    assert_eq!(c.cmd(CMD_TRIM, 0, size - 1, 2).error, EINVAL);
    assert_eq!(c.cmd(CMD_WRITE_ZEROES, 0, size - 1, 2).error, ENOSPC);
    assert_eq!(c.cmd(99, 0, 0, 0).error, EINVAL, "unknown command");
    assert_eq!(c.cmd(CMD_READ, CMD_FLAG_FAST_ZERO, 0, 512).error, EINVAL, "invalid flag");
    assert_eq!(c.cmd(CMD_READ, CMD_FLAG_DF, 0, 512).error, EINVAL, "DF without structured replies");
    assert_eq!(c.write(0, b"abc", CMD_FLAG_NO_HOLE), EINVAL, "NO_HOLE on WRITE");
    assert_eq!(c.cmd(CMD_BLOCK_STATUS, 0, 0, 512).error, EINVAL, "no context selected");
    assert_eq!(c.cmd(CMD_READ, 0, 0, 33 * MIB).error, EINVAL, "read over the max payload");
    assert_eq!(c.read(0, 0), Ok(vec![]), "zero-length read");
    // The connection survived all of that.
    assert_eq!(c.write(4096, b"ok", CMD_FLAG_FUA), 0);
    assert_eq!(c.read(4096, 2).unwrap(), b"ok");
    assert_eq!(c.cmd(CMD_CACHE, 0, 0, 4096).error, 0);
    assert_eq!(c.cmd(CMD_FLUSH, 0, 0, 0).error, 0);
    // Bad magic ends the connection.
    c.s.write_all(&[0u8; 28]).unwrap();
    assert!(closed(&mut c.s));
    // A WRITE announcing more than the max payload is disconnected, not drained.
    let mut c = Client::connect(srv.addr, "vol", false, false);
    let mut out = Vec::new();
    encode_request(
        HeaderMode::Compact,
        &Request { command: CMD_WRITE, length: 33 * MIB, ..Default::default() },
        &mut out,
    );
    c.s.write_all(&out).unwrap();
    assert!(closed(&mut c.s));
}

#[test]
fn read_only_export_refuses_writes() {
    let srv = server();
    let mut c = Client::connect(srv.addr, "ro", false, false);
    assert_ne!(c.flags & TF_READ_ONLY, 0);
    assert_eq!(c.write(0, b"x", 0), EPERM);
    assert_eq!(c.cmd(CMD_TRIM, 0, 0, 512).error, EPERM);
    assert_eq!(c.cmd(CMD_WRITE_ZEROES, 0, 0, 512).error, EPERM);
    assert_eq!(c.read(0, 512).unwrap(), vec![0; 512]);
    c.disconnect();
}

#[test]
fn structured_reads_send_holes_and_block_status_merges() {
    let srv = server();
    let mut c = Client::connect(srv.addr, "vol", true, false);
    assert_eq!(c.write(MIB, &vec![7u8; 65536], 0), 0);
    let off = MIB - 65536;
    c.send(CMD_READ, 0, off, 3 * 65536, &[]);
    let r = c.recv(|_| None);
    assert_eq!(r.error, 0);
    let holes = r.chunks.iter().filter(|ch| matches!(ch, Chunk::OffsetHole { .. })).count();
    let datas = r.chunks.iter().filter(|ch| matches!(ch, Chunk::OffsetData { .. })).count();
    assert_eq!(
        (holes, datas),
        (2, 1),
        "{:?}",
        r.chunks.iter().map(|c| c.kind()).collect::<Vec<_>>()
    );
    let data = Client::assemble(&r, off, 3 * 65536);
    assert!(data[..65536].iter().all(|&b| b == 0));
    assert!(data[65536..131072].iter().all(|&b| b == 7));
    assert!(data[131072..].iter().all(|&b| b == 0));
    // DF: one data chunk.
    c.send(CMD_READ, CMD_FLAG_DF, off, 3 * 65536, &[]);
    let r = c.recv(|_| None);
    assert_eq!(r.chunks.len(), 1);
    // Block status over the whole export: hole, data, hole.
    let r = c.cmd(CMD_BLOCK_STATUS, 0, 0, c.size);
    let Chunk::BlockStatus { context, extents } = &r.chunks[0] else { panic!("{r:?}") };
    assert_eq!(*context, thinpool::nbd::BASE_ALLOCATION_ID);
    assert_eq!(extents, &vec![(MIB as u32, 3), (65536, 0), ((c.size - MIB - 65536) as u32, 3)]);
    let r = c.cmd(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 4096);
    let Chunk::BlockStatus { extents, .. } = &r.chunks[0] else { panic!() };
    assert_eq!(extents, &vec![(4096, 3)]);
    // Errors on structured READ come as error chunks.
    c.send(CMD_READ, 0, c.size, 512, &[]);
    let r = c.recv(|_| None);
    assert_eq!(r.error, EINVAL);
    assert!(matches!(r.chunks[..], [Chunk::Error { .. }]));
    c.disconnect();
}

#[test]
fn extended_headers() {
    let srv = server();
    let mut c = Client::connect(srv.addr, "vol", true, true);
    assert_eq!(c.write(8192, b"extended", CMD_FLAG_FUA), 0);
    assert_eq!(c.read(8192, 8).unwrap(), b"extended");
    // 64-bit effect length on WRITE_ZEROES / BLOCK_STATUS.
    let r = c.cmd(CMD_BLOCK_STATUS, 0, 0, c.size);
    let Chunk::BlockStatusExt { extents, .. } = &r.chunks[0] else { panic!("{r:?}") };
    assert_eq!(extents[0], (65536, 0));
    assert_eq!(c.cmd(CMD_WRITE_ZEROES, 0, 0, 65536).error, 0);
    assert_eq!(c.read(8192, 8).unwrap(), vec![0; 8]);
    assert_eq!(c.cmd(99, 0, 0, 0).error, EINVAL);
    // EXPORT_NAME after EXTENDED_HEADERS is a protocol violation.
    let mut s = hello(srv.addr);
    assert_eq!(option(&mut s, &ClientOption::ExtendedHeaders), [OptionReply::Ack]);
    s.write_all(&encode_option(&ClientOption::ExportName("vol".into()))).unwrap();
    assert!(closed(&mut s));
    c.disconnect();
}

/// Held shut by a test until it has seen what must come first; opens by itself after 30 s
/// so a server that waits for the held requests fails the test instead of hanging it.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }

    fn wait(&self) {
        let open = self.open.lock().unwrap();
        drop(self.cv.wait_timeout_while(open, Duration::from_secs(30), |o| !*o).unwrap());
    }
}

/// An export whose reads at offset 0 wait at a gate, to show replies are not head-of-line
/// blocked.
struct Slow(MemExport, Arc<Gate>);

/// A "slow" catalog and the gate its reads at offset 0 wait at.
fn slow_catalog() -> (Arc<MemCatalog>, Arc<Gate>) {
    let gate = Arc::new(Gate::default());
    let cat = Arc::new(MemCatalog::new());
    cat.insert("slow", "", Arc::new(Slow(MemExport::new(16 * MIB), gate.clone())));
    (cat, gate)
}

impl Export for Slow {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> ExportResult<()> {
        if offset == 0 {
            self.1.wait();
        }
        self.0.read(offset, buf)
    }
    fn write(
        &self,
        o: u64,
        p: &thinpool::export::Payload<'_>,
        how: thinpool::export::WriteMode,
    ) -> ExportResult<thinpool::export::Written> {
        self.0.write(o, p, how)
    }
    fn write_zeroes(&self, o: u64, l: u64, how: thinpool::export::Zeroing) -> ExportResult<()> {
        self.0.write_zeroes(o, l, how)
    }
    fn trim(&self, o: u64, l: u64, f: bool) -> ExportResult<()> {
        self.0.trim(o, l, f)
    }
    fn flush(&self) -> ExportResult<()> {
        self.0.flush()
    }
    fn extents(&self, o: u64, l: u64) -> ExportResult<Vec<Extent>> {
        self.0.extents(o, l)
    }
}

#[test]
fn stalled_workers_make_room_for_more() {
    // A connection starts with two workers; three slow requests occupy them all, and the
    // fast read behind them is still answered while every slow one is held.
    let (cat, gate) = slow_catalog();
    let srv = start(cat, ServerOptions::default());
    let mut c = Client::connect(srv.addr, "slow", false, false);
    let slow: Vec<u64> = (0..3).map(|_| c.send(CMD_READ, 0, 0, 512, &[])).collect();
    let fast = c.send(CMD_READ, 0, 4096, 512, &[]);
    let first = c.recv(|_| Some(512));
    assert_eq!(first.cookie, fast, "the fast read is answered first");
    gate.open();
    for _ in 0..3 {
        let r = c.recv(|_| Some(512));
        assert!(slow.contains(&r.cookie) && r.error == 0);
    }
    c.disconnect();
}

#[test]
fn pipelined_out_of_order_and_disconnect_with_requests_in_flight() {
    let (cat, gate) = slow_catalog();
    let srv = start(cat, ServerOptions::default());
    let mut c = Client::connect(srv.addr, "slow", false, false);
    let slow = c.send(CMD_READ, 0, 0, 512, &[]);
    // 200 pipelined writes behind the slow read, each answered while the read is held.
    let mut cookies = Vec::new();
    for i in 0..200u64 {
        cookies.push(c.send(CMD_WRITE, 0, 4096 * (i + 1), 4096, &vec![i as u8; 4096]));
    }
    let mut seen = Vec::new();
    for i in 0..201 {
        if i == 200 {
            gate.open();
        }
        let r = c.recv(|ck| (ck == slow).then_some(512));
        assert_eq!(r.error, 0);
        seen.push(r.cookie);
    }
    assert_ne!(seen[0], slow, "fast replies overtake the slow read");
    assert_eq!(*seen.last().unwrap(), slow);
    seen.sort_unstable();
    let mut all = cookies.clone();
    all.push(slow);
    all.sort_unstable();
    assert_eq!(seen, all, "every request answered exactly once");
    // DISC right behind a batch of writes: all are applied and answered before the close.
    for i in 0..64u64 {
        c.send(CMD_WRITE, 0, 8 * MIB + 4096 * i, 4096, &vec![0x5a; 4096]);
    }
    let mut out = Vec::new();
    encode_request(
        HeaderMode::Compact,
        &Request { command: CMD_DISC, ..Default::default() },
        &mut out,
    );
    c.s.write_all(&out).unwrap();
    for _ in 0..64 {
        assert_eq!(c.recv(|_| None).error, 0);
    }
    assert!(closed(&mut c.s));
    let mut c = Client::connect(srv.addr, "slow", false, false);
    assert_eq!(c.read(8 * MIB, 64 * 4096).unwrap(), vec![0x5a; 64 * 4096]);
    // Abrupt close with writes in flight: the server survives and keeps serving.
    let mut d = Client::connect(srv.addr, "slow", false, false);
    for i in 0..32u64 {
        d.send(CMD_WRITE, 0, 12 * MIB + 4096 * i, 4096, &[1; 4096]);
    }
    drop(d);
    assert_eq!(c.write(0, b"alive", 0), 0);
    c.disconnect();
}

#[test]
fn serve_connected_speaks_kernel_transmission() {
    let exp: Arc<dyn Export> = Arc::new(MemExport::new(4 * MIB));
    let flags = thinpool::nbd::kernel_flags(exp.as_ref(), false);
    assert_eq!(flags & TF_SEND_DF, 0, "no structured-reply flags for the kernel");
    assert_ne!(flags & TF_SEND_FLUSH, 0);
    assert_ne!(flags & TF_SEND_TRIM, 0);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let e2 = exp.clone();
    let t = std::thread::spawn(move || thinpool::nbd::serve_connected(theirs, e2, false, 4));
    let mut s = ours;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut send = |cmd: u16, flags: u16, cookie: u64, off: u64, len: u32, payload: &[u8]| {
        let mut out = Vec::new();
        encode_request(
            HeaderMode::Compact,
            &Request { flags, command: cmd, cookie, offset: off, length: len.into() },
            &mut out,
        );
        out.extend_from_slice(payload);
        s.write_all(&out).unwrap();
    };
    send(CMD_WRITE, CMD_FLAG_FUA, 0xdead_0001, 4096, 4096, &[9; 4096]);
    send(CMD_FLUSH, 0, 0xdead_0002, 0, 0, &[]);
    send(CMD_TRIM, 0, 0xdead_0003, 0, 4096, &[]);
    let mut s2 = s.try_clone().unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let mut h = [0u8; 16];
        s2.read_exact(&mut h).unwrap();
        let ReplyHeader::Simple { error, cookie } = decode_reply_header(&h).unwrap() else {
            panic!()
        };
        assert_eq!(error, 0);
        got.push(cookie);
    }
    got.sort_unstable();
    assert_eq!(got, [0xdead_0001, 0xdead_0002, 0xdead_0003]);
    let mut out = Vec::new();
    encode_request(
        HeaderMode::Compact,
        &Request { command: CMD_READ, cookie: 5, offset: 4096, length: 4096, flags: 0 },
        &mut out,
    );
    s2.write_all(&out).unwrap();
    let mut h = [0u8; 16];
    s2.read_exact(&mut h).unwrap();
    assert_eq!(decode_reply_header(&h).unwrap(), ReplyHeader::Simple { error: 0, cookie: 5 });
    let mut d = vec![0u8; 4096];
    s2.read_exact(&mut d).unwrap();
    assert_eq!(d, vec![9; 4096]);
    let mut out = Vec::new();
    encode_request(
        HeaderMode::Compact,
        &Request { command: CMD_DISC, ..Default::default() },
        &mut out,
    );
    s2.write_all(&out).unwrap();
    t.join().unwrap();
    let mut b = [0u8; 1];
    assert_eq!(s2.read(&mut b).unwrap(), 0, "closed after DISC");
}

#[test]
fn many_concurrent_connections() {
    let srv = server();
    let addr = srv.addr;
    let threads: Vec<_> = (0..32u64)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr, "vol", t % 2 == 0, t % 4 == 1);
                for i in 0..20u64 {
                    let off = (t * 20 + i) * 65536;
                    let data = random_bytes(65536, off + 1);
                    assert_eq!(c.write(off, &data, 0), 0);
                    assert_eq!(c.read(off, 65536).unwrap(), data);
                }
                assert_eq!(c.cmd(CMD_FLUSH, 0, 0, 0).error, 0);
                c.disconnect();
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    // Multi-conn consistency: everything written on 32 connections is visible on a new one.
    let mut c = Client::connect(addr, "vol", false, false);
    for t in [0u64, 17, 31] {
        let off = (t * 20 + 19) * 65536;
        assert_eq!(c.read(off, 65536).unwrap(), random_bytes(65536, off + 1));
    }
    c.disconnect();
    let released = || srv.server.connections() == 0;
    wait_for("the connections to be released", Duration::from_secs(10), released);
}
