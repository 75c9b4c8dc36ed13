//! The transmission phase of one connection.
//!
//! Shape: worker threads share the connection leader/follower style: [`START_WORKERS`] to
//! begin with, and one more (up to `workers`) each time all of them have been busy for
//! [`STALL`], which a watch thread checks. The thread holding
//! the reader lock (the leader) reads requests into its own reusable buffer (one buffered
//! socket read brings in several requests). Quick requests (READs up to [`INLINE_MAX`] of data
//! in memory, and WRITEs the export can do in place without allocating, copying or waiting:
//! [`Export::read_quick`](crate::export::Export::read_quick), and
//! [`Export::write`](crate::export::Export::write) with `quick`) it serves itself, still
//! holding the lock, and answers at once: no thread hand-off and no lock traffic per request.
//! Any other request makes the leader release the lock (a waiting follower becomes leader)
//! and execute it, so a slow request (allocation, copy-on-write, commit, waiting for space,
//! FLUSH) holds up only its own thread. Every reply (header and data) goes out whole under the
//! writer lock, in completion order; the kernel's 128 queued requests wait in the socket
//! buffer rather than in our memory.
//!
//! Replies to inline requests are batched while the next request already sits complete in the
//! read buffer (up to [`BATCH_MAX`] bytes): one socket write then carries several replies, and
//! the client wakes once for them. The batch goes out before the leader could block (the next
//! request is not all there), before it hands the lock over, and when it is full, so a reply
//! waits only for requests the server already holds, never for the client.
//!
//! A large WRITE payload (from [`SPLICE_MIN`] bytes) to an export that takes it
//! ([`Export::splices_writes`](crate::export::Export::splices_writes)) is not read into memory:
//! the leader splices it from the socket into its own pipe, which moves page references, not
//! bytes, and hands the lock over; the worker passes the export a
//! [`Payload::piped`](crate::export::Payload::piped), and an overwrite has the data device take
//! the bytes from the pipe. One copy (pipe to page cache) instead of two (socket to buffer,
//! buffer to page cache), and the next leader reads on while the copy runs. A write that needs
//! the bytes in memory (allocation, copy-on-write) has the pool read the pipe into the
//! worker's buffer, in the same call. The first [`SPLICE_PEEK`] bytes are read into memory anyway: a payload
//! that starts with zeros goes the usual way, where an all-zero write unmaps rather than
//! writes.
//!
//! Memory is bounded by `workers x 32 MiB` per connection: a payload longer than
//! [`MAX_PAYLOAD`] is never allocated (READ → EINVAL, WRITE → disconnect, as the spec
//! recommends when the payload cannot be skipped cheaply).

use std::io::{self, BufRead, BufReader, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Scope;
use std::time::{Duration, Instant};

use super::contexts::Context;
use super::negotiate::Negotiated;
use super::reply::{allocation_status, Fail, Reply, KEEP_BUFFER};
use super::splice::Pipe;
use super::{RateLog, Sock};
use crate::export::{Payload, WriteMode, Written, Zeroing};
use crate::nbd::proto::msg::*;
use crate::nbd::proto::wire::*;

/// Requests up to this many bytes may be served inline by the leader.
const INLINE_MAX: u64 = 128 << 10;
/// Structured READs shorter than this are sent as one data chunk, holes included.
const SPARSE_MIN: u64 = 64 << 10;

/// Read-side buffering: several small requests arrive per read syscall (a queue of 16 4 KiB
/// WRITEs is 66 KiB). Not more: the buffer also takes in the start of a large payload, which
/// is then copied once more than a spliced one.
const READ_BUFFER: usize = 64 << 10;
/// Worker threads a connection starts with. Two overlap one request's execution (a payload
/// copy, a commit) with reading the next; more only oversubscribe the CPUs on the fast path
/// (with 8 on 2 cores, concurrent 1 MiB copies into one file spin on its inode lock, and
/// 1 MiB writes ran 20 % slower). More start when requests stall (see [`STALL`]), up to the
/// configured number.
const START_WORKERS: usize = 2;
/// When every worker has been busy this long (nobody reading the socket), another starts, so
/// slow requests (a commit, a wait for space) do not stop the connection from reading.
const STALL: Duration = Duration::from_millis(25);
/// Send buffer asked for unix sockets (see [`serve`]).
const SEND_BUFFER: usize = 4 << 20;
/// Batched inline replies are sent once they reach this many bytes.
const BATCH_MAX: usize = 64 << 10;
/// WRITE payloads from this long are spliced (see the module doc).
const SPLICE_MIN: usize = 256 << 10;
/// Bytes of a spliced payload read into memory first, to look for zeros.
const SPLICE_PEEK: usize = 4 << 10;

struct Conn<'a> {
    sock: &'a Sock,
    neg: Negotiated,
    reader: Mutex<Reader<'a>>,
    writer: Mutex<()>,
    log: &'a RateLog,
    dead: AtomicBool,
    /// Worker threads started, and the most allowed (see [`START_WORKERS`]).
    threads: AtomicUsize,
    max_threads: usize,
    /// Workers waiting to lead: done with their request, not holding the reader lock yet.
    waiting: AtomicUsize,
    /// When a leader last handed the reader over, in microseconds since `epoch`.
    handed_over: AtomicU64,
    epoch: Instant,
}

impl Conn<'_> {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

struct Reader<'a> {
    r: BufReader<&'a Sock>,
    done: bool,
    /// Replies to inline requests not sent yet (see the module doc).
    batch: Vec<u8>,
}

/// A request read off the wire, with an error already decided for malformed ones.
struct Incoming {
    req: Request,
    payload_len: usize,
    /// The last `spliced` bytes of the payload wait in the worker's pipe, not in its buffer.
    spliced: usize,
    reject: Option<(u32, &'static str)>,
}

/// Serves transmission on `sock` until DISC, EOF, a protocol violation or a write failure;
/// every request read is answered (if the socket still works) before this returns.
pub(crate) fn serve(sock: Arc<Sock>, neg: Negotiated, workers: usize, log: &RateLog) {
    if let Sock::Unix(u) = &*sock {
        // A unix socket queues at most its sender's buffer (208 KiB by default): a 1 MiB READ
        // reply would make the replying worker wait, holding the writer lock, until the client
        // has read most of it. Linux caps this at net.core.wmem_max; TCP keeps autotuning.
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(u, SEND_BUFFER);
    }
    let conn = Conn {
        sock: &sock,
        neg,
        reader: Mutex::new(Reader {
            r: BufReader::with_capacity(READ_BUFFER, &*sock),
            done: false,
            batch: Vec::new(),
        }),
        writer: Mutex::new(()),
        log,
        dead: AtomicBool::new(false),
        threads: AtomicUsize::new(1),
        max_threads: workers.max(1),
        waiting: AtomicUsize::new(0),
        handed_over: AtomicU64::new(0),
        epoch: Instant::now(),
    };
    std::thread::scope(|s| {
        let conn = &conn;
        for _ in 1..START_WORKERS.min(conn.max_threads) {
            spawn_worker(conn, s);
        }
        if conn.max_threads > START_WORKERS {
            let _ = std::thread::Builder::new()
                .name("nbd-watch".into())
                .spawn_scoped(s, move || watch(conn, s));
        }
        worker(conn);
    });
    sock.shutdown(Shutdown::Both);
}

/// Starts one more worker if the limit allows; if the thread cannot be spawned the connection
/// just runs with fewer.
fn spawn_worker<'scope, 'env>(c: &'env Conn<'env>, s: &'scope Scope<'scope, 'env>) {
    let id = c.threads.fetch_add(1, Ordering::SeqCst);
    if id >= c.max_threads {
        c.threads.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let spawned =
        std::thread::Builder::new().name("nbd-worker".into()).spawn_scoped(s, move || worker(c));
    if spawned.is_err() {
        c.threads.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Adds a worker whenever all of them have been busy for [`STALL`]; ends with the connection.
fn watch<'scope, 'env>(c: &'env Conn<'env>, s: &'scope Scope<'scope, 'env>) {
    while !c.dead.load(Ordering::Relaxed) {
        std::thread::sleep(STALL);
        if c.threads.load(Ordering::SeqCst) >= c.max_threads {
            return;
        }
        // A held reader lock means someone leads; nobody leading or waiting to since the
        // last hand-off STALL ago means every worker is stuck on a request.
        let Ok(r) = c.reader.try_lock() else { continue };
        if r.done {
            return;
        }
        drop(r);
        let since = c.now_us().saturating_sub(c.handed_over.load(Ordering::SeqCst));
        if c.waiting.load(Ordering::SeqCst) == 0 && since >= STALL.as_micros() as u64 {
            spawn_worker(c, s);
        }
    }
}

/// What a worker keeps from one request to the next: the payload buffer, the splice pipe
/// (made by the first spliced WRITE) and the reply being built.
#[derive(Default)]
struct Buffers {
    data: Vec<u8>,
    pipe: Option<Pipe>,
    out: Reply,
}

impl Buffers {
    /// Drops what the last request left behind: a pipe still holding payload, and memory
    /// beyond what an ordinary request needs.
    fn settle(&mut self) {
        if self.pipe.as_ref().is_some_and(|p| p.pending > 0) {
            self.pipe = None; // what is left belongs to a failed request
        }
        if self.data.len() > KEEP_BUFFER {
            self.data = Vec::new();
        }
        self.out.trim();
    }
}

fn worker(c: &Conn<'_>) {
    let mut b = Buffers::default();
    while let Some(inc) = lead(c, &mut b) {
        b.out.clear();
        handle(c, &inc, &mut b);
        b.settle();
    }
}

/// Takes the reader lock and serves quick requests inline until one needs the full way;
/// returns that one (with the lock released), or None when the connection ends. Batched
/// replies are always sent before this returns.
fn lead(c: &Conn<'_>, b: &mut Buffers) -> Option<Incoming> {
    c.waiting.fetch_add(1, Ordering::SeqCst);
    let mut guard = c.reader.lock().unwrap_or_else(|e| e.into_inner());
    c.waiting.fetch_sub(1, Ordering::SeqCst);
    let r = &mut *guard;
    loop {
        if r.done || c.dead.load(Ordering::Relaxed) {
            flush_batch(c, &mut r.batch);
            return None;
        }
        // A non-empty batch means the next request is already buffered: reading it cannot block.
        let inc = match read_request(c, &mut r.r, b) {
            Ok(Some(inc)) => inc,
            Ok(None) => {
                r.done = true;
                continue;
            }
            Err(e) => {
                r.done = true;
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    c.log.warn(format_args!("export {:?}: dropping client: {e}", c.neg.name));
                }
                continue;
            }
        };
        b.out.clear();
        if !inline(c, &inc, b) {
            flush_batch(c, &mut r.batch);
            c.handed_over.store(c.now_us(), Ordering::SeqCst);
            return Some(inc);
        }
        if r.batch.len() + b.out.len() > BATCH_MAX || !next_request_buffered(c, &r.r) {
            // The reply goes out with the batch in one write, without copying it in first.
            send(c, std::iter::once(&r.batch[..]).chain(b.out.slices()));
            r.batch.clear();
        } else {
            b.out.slices().for_each(|p| r.batch.extend_from_slice(p));
        }
    }
}

fn flush_batch(c: &Conn<'_>, batch: &mut Vec<u8>) {
    if !batch.is_empty() {
        send(c, [&batch[..]]);
        batch.clear();
    }
}

/// Whether the read buffer holds the whole next request (header and payload), so reading it
/// cannot block.
fn next_request_buffered(c: &Conn<'_>, r: &BufReader<&Sock>) -> bool {
    let mode = c.neg.mode;
    let buf = r.buffer();
    let Some(hdr) = buf.get(..mode.request_len()) else { return false };
    match decode_request(mode, hdr) {
        Ok(req) => (buf.len() - hdr.len()) as u64 >= req.payload_len(mode),
        Err(_) => false,
    }
}

/// Serves `inc` into `out` if it is quick (see the module doc); false, with nothing done, if
/// it must go the full way (errors included).
fn inline(c: &Conn<'_>, inc: &Incoming, b: &mut Buffers) -> bool {
    let req = &inc.req;
    if req.length > INLINE_MAX
        || inc.spliced > 0
        || req.flags & CMD_FLAG_FUA != 0
        || !matches!(req.command, CMD_READ | CMD_WRITE)
        || check(c, inc).is_err()
    {
        return false;
    }
    match req.command {
        CMD_READ => matches!(read(c, req, &mut b.out, true), Ok(true)),
        _ => {
            let payload = Payload::mem(&b.data[..inc.payload_len]);
            matches!(c.neg.export.write(req.offset, &payload, WriteMode::QUICK), Ok(Written::Done))
                && {
                    encode_ok(c, req, &mut b.out.head);
                    true
                }
        }
    }
}

/// Reads the next request; `Ok(None)` on DISC.
fn read_request(
    c: &Conn<'_>,
    r: &mut BufReader<&Sock>,
    b: &mut Buffers,
) -> io::Result<Option<Incoming>> {
    let mode = c.neg.mode;
    let mut hdr = [0u8; 32];
    let hdr = &mut hdr[..mode.request_len()];
    r.read_exact(hdr)?;
    let req =
        decode_request(mode, hdr).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if req.command == CMD_DISC {
        return Ok(None);
    }
    let payload = req.payload_len(mode);
    if payload > u64::from(MAX_PAYLOAD) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("request payload of {payload} bytes exceeds {MAX_PAYLOAD}"),
        ));
    }
    let n = payload as usize;
    let data = &mut b.data;
    if data.len() < n {
        data.resize(n, 0);
    }
    // Take what the buffer already holds, then read the rest straight from the socket: going
    // through the buffer would copy a large payload twice.
    let held = r.buffer().len().min(n);
    data[..held].copy_from_slice(&r.buffer()[..held]);
    r.consume(held);
    let mut spliced = 0;
    if held < n {
        let splice = req.command == CMD_WRITE && n >= SPLICE_MIN && c.neg.export.splices_writes();
        spliced = read_payload(r.get_ref(), &mut data[..n], held, splice, &mut b.pipe)?;
    }
    let reject = match (mode, req.command) {
        (HeaderMode::Extended, CMD_WRITE) if n as u64 != req.length => {
            Some((EINVAL, "extended WRITE without PAYLOAD_LEN"))
        }
        (_, CMD_WRITE) => None,
        _ if n > 0 => Some((EINVAL, "unexpected payload")),
        _ => None,
    };
    Ok(Some(Incoming { req, payload_len: n, spliced, reject }))
}

/// Reads the rest of a payload of which `held` bytes are in `data` already. With `splice`,
/// a payload that does not start with zeros goes into the worker's pipe as far as it fits
/// (see the module doc); returns how many bytes went there.
fn read_payload(
    sock: &Sock,
    data: &mut [u8],
    mut held: usize,
    splice: bool,
    pipe: &mut Option<Pipe>,
) -> io::Result<usize> {
    let mut sock = sock;
    let n = data.len();
    if splice {
        let peek = SPLICE_PEEK.min(n);
        if held < peek {
            sock.read_exact(&mut data[held..peek])?;
            held = peek;
        }
        if pipe.is_none() {
            // Without a pipe the payload is just read.
            *pipe = Pipe::new().ok();
        }
        let data_not_zeros = data[..held].iter().any(|&b| b != 0);
        if let Some(p) = pipe.as_mut().filter(|p| data_not_zeros && n - held <= p.cap) {
            let moved = p.fill_from(sock, n - held)?;
            if moved == n - held {
                return Ok(moved);
            }
            // The pipe filled up early (its slots hold partial pages): the rest goes through
            // memory.
            p.drain_into(&mut data[held..held + moved])?;
            held += moved;
        }
    }
    sock.read_exact(&mut data[held..n])?;
    Ok(0)
}

fn allowed_flags(c: &Conn<'_>, inc: &Incoming) -> u16 {
    let n = &c.neg;
    let mut f = CMD_FLAG_FUA;
    match inc.req.command {
        CMD_READ if n.structured => f |= CMD_FLAG_DF,
        CMD_WRITE_ZEROES => {
            f |= CMD_FLAG_NO_HOLE;
            if n.flags & TF_SEND_FAST_ZERO != 0 {
                f |= CMD_FLAG_FAST_ZERO;
            }
        }
        CMD_BLOCK_STATUS => f |= CMD_FLAG_REQ_ONE,
        _ => {}
    }
    if n.mode == HeaderMode::Extended && (inc.payload_len > 0 || inc.req.command == CMD_WRITE) {
        f |= CMD_FLAG_PAYLOAD_LEN;
    }
    f
}

fn handle(c: &Conn<'_>, inc: &Incoming, b: &mut Buffers) {
    let req = &inc.req;
    match execute(c, inc, b) {
        Ok(()) => {}
        Err(f) => {
            if f.client_fault {
                c.log.warn(format_args!(
                    "export {:?}: command {} at {}+{} failed: {}",
                    c.neg.name, req.command, req.offset, req.length, f.why
                ));
            } else {
                tracing::error!(
                    "nbd: export {:?}: command {} at {}+{} failed: {}",
                    c.neg.name,
                    req.command,
                    req.offset,
                    req.length,
                    f.why
                );
            }
            b.out.clear();
            encode_error(c, req, f.errno, &f.why, &mut b.out.head);
            send(c, b.out.slices());
        }
    }
}

/// Refuses malformed requests (unknown command or flag, read-only, range, alignment).
fn check(c: &Conn<'_>, inc: &Incoming) -> Result<(), Fail> {
    let req = &inc.req;
    let neg = &c.neg;
    if let Some((errno, why)) = inc.reject {
        return Err(Fail::client(errno, why));
    }
    if !matches!(
        req.command,
        CMD_READ
            | CMD_WRITE
            | CMD_FLUSH
            | CMD_TRIM
            | CMD_CACHE
            | CMD_WRITE_ZEROES
            | CMD_BLOCK_STATUS
    ) {
        return Err(Fail::client(EINVAL, "unknown command"));
    }
    if req.flags & !allowed_flags(c, inc) != 0 {
        return Err(Fail::client(EINVAL, "flag not valid for this command"));
    }
    let writes = matches!(req.command, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && neg.read_only {
        return Err(Fail::client(EPERM, "export is read-only"));
    }
    let export = &neg.export;
    let size = export.size();
    if req.command != CMD_FLUSH && (req.offset > size || req.length > size - req.offset) {
        let errno =
            if matches!(req.command, CMD_WRITE | CMD_WRITE_ZEROES) { ENOSPC } else { EINVAL };
        return Err(Fail::client(errno, "range beyond the end of the export"));
    }
    if let Some(bs) = neg.block_size {
        let min = u64::from(bs.minimum.max(1));
        if req.command != CMD_FLUSH
            && (!req.offset.is_multiple_of(min) || !req.length.is_multiple_of(min))
        {
            return Err(Fail::client(EINVAL, "request is not aligned to the minimum block size"));
        }
    }
    Ok(())
}

/// Executes a request and sends its success reply; errors are returned for the caller to send.
fn execute(c: &Conn<'_>, inc: &Incoming, b: &mut Buffers) -> Result<(), Fail> {
    check(c, inc)?;
    let req = &inc.req;
    let export = &c.neg.export;
    let fua = req.flags & CMD_FLAG_FUA != 0;
    match req.command {
        CMD_READ => {
            read(c, req, &mut b.out, false)?;
            send(c, b.out.slices());
            return Ok(());
        }
        CMD_WRITE => write(c, inc, b)?,
        CMD_FLUSH => export.flush()?,
        CMD_TRIM => export.trim(req.offset, req.length, fua)?,
        CMD_CACHE => export.cache(req.offset, req.length)?,
        CMD_WRITE_ZEROES => export.write_zeroes(
            req.offset,
            req.length,
            Zeroing {
                may_trim: req.flags & CMD_FLAG_NO_HOLE == 0,
                fast: req.flags & CMD_FLAG_FAST_ZERO != 0,
                fua,
            },
        )?,
        CMD_BLOCK_STATUS => return block_status(c, req, &mut b.out.head),
        _ => return Err(Fail::client(EINVAL, "unknown command")),
    }
    encode_ok(c, req, &mut b.out.head);
    send(c, b.out.slices());
    Ok(())
}

/// A WRITE, its payload in memory or, spliced from the socket, partly in the worker's pipe
/// (the export takes it from there straight to its device, or reads it into `data`).
fn write(c: &Conn<'_>, inc: &Incoming, b: &mut Buffers) -> Result<(), Fail> {
    let req = &inc.req;
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let internal = |why: String| Fail { errno: EIO, why, client_fault: false };
    let data = &mut b.data[..inc.payload_len];
    let written = if inc.spliced > 0 {
        let p = b.pipe.as_mut().ok_or_else(|| internal("spliced payload without a pipe".into()))?;
        let held = inc.payload_len - inc.spliced;
        let w = c.neg.export.write(
            req.offset,
            &Payload::piped(data, held, p.r.as_fd()),
            WriteMode::full(fua),
        )?;
        // The export took every byte out of the pipe (after an error, an unknown part: the
        // worker then drops the pipe).
        p.pending = 0;
        w
    } else {
        c.neg.export.write(req.offset, &Payload::mem(data), WriteMode::full(fua))?
    };
    match written {
        Written::Done => Ok(()),
        Written::Declined => Err(internal("the export declined a full write".into())),
    }
}

fn encode_ok(c: &Conn<'_>, req: &Request, out: &mut Vec<u8>) {
    match c.neg.mode {
        HeaderMode::Compact => encode_simple_reply(req.cookie, 0, out),
        HeaderMode::Extended => {
            encode_chunk(HeaderMode::Extended, true, req.cookie, req.offset, &Chunk::None, out)
        }
    }
}

fn encode_error(c: &Conn<'_>, req: &Request, errno: u32, why: &str, out: &mut Vec<u8>) {
    let structured_read = c.neg.structured && req.command == CMD_READ;
    if c.neg.mode == HeaderMode::Compact && !structured_read {
        encode_simple_reply(req.cookie, errno, out);
        return;
    }
    // Messages are for humans and must not leak host paths: send only the first clause.
    let message = why.split(':').next().unwrap_or_default();
    let chunk = Chunk::Error { error: errno, message: message.to_owned() };
    encode_chunk(c.neg.mode, true, req.cookie, req.offset, &chunk, out);
}

/// Appends the whole reply to a READ (headers and data) to `out`; on error `out` may hold
/// part of it. With `quick`, data is read only if that is quick ([`Export::read_quick`]),
/// else `Ok(false)` with `out` holding part of the reply.
///
/// [`Export::read_quick`]: crate::export::Export::read_quick
fn read(c: &Conn<'_>, req: &Request, out: &mut Reply, quick: bool) -> Result<bool, Fail> {
    let df = req.flags & CMD_FLAG_DF != 0;
    if req.length > u64::from(MAX_PAYLOAD) {
        let errno = if df { EOVERFLOW } else { EINVAL };
        return Err(Fail::client(errno, "read longer than the maximum payload"));
    }
    let len = req.length as usize;
    let export = &c.neg.export;
    // Data is read straight into the reply after its header: one write sends both.
    let data_at = |out: &mut Reply, off: u64, n: usize| -> Result<bool, Fail> {
        let buf = out.data_slot(n);
        if quick {
            return Ok(export.read_quick(off, buf));
        }
        export.read(off, buf)?;
        Ok(true)
    };
    if !c.neg.structured {
        encode_simple_reply(req.cookie, 0, &mut out.head);
        return data_at(out, req.offset, len);
    }
    let mode = c.neg.mode;
    if len == 0 {
        encode_chunk(mode, true, req.cookie, req.offset, &Chunk::None, &mut out.head);
        return Ok(true);
    }
    // Sparse read: holes become OFFSET_HOLE chunks and are not read at all. With DF the reply
    // must be a single data chunk. Short reads skip the hole lookup: it costs more than the
    // few zeros it would save sending.
    let sparse = !df && req.length >= SPARSE_MIN && export.sparse_reads();
    let extents = if sparse {
        export.extents(req.offset, req.length).unwrap_or_default()
    } else {
        Vec::new()
    };
    // (start, end, is_hole) pieces covering the request.
    let mut pieces: Vec<(usize, usize, bool)> = Vec::new();
    let mut pos = 0usize;
    for e in extents {
        if pos >= len {
            break;
        }
        let n = (e.len.min((len - pos) as u64)) as usize;
        let hole = e.zero;
        match pieces.last_mut() {
            Some(last) if last.2 == hole => last.1 += n,
            _ => pieces.push((pos, pos + n, hole)),
        }
        pos += n;
    }
    if pos < len {
        match pieces.last_mut() {
            Some(last) if !last.2 => last.1 = len,
            _ => pieces.push((pos, len, false)),
        }
    }
    for (i, &(s, e, hole)) in pieces.iter().enumerate() {
        let done = i + 1 == pieces.len();
        let off = req.offset + s as u64;
        if hole {
            let chunk = Chunk::OffsetHole { offset: off, len: (e - s) as u32 };
            encode_chunk(mode, done, req.cookie, req.offset, &chunk, &mut out.head);
        } else {
            let n = (e - s) as u64;
            encode_offset_data_prefix(mode, done, req.cookie, req.offset, off, n, &mut out.head);
            if !data_at(out, off, e - s)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

fn block_status(c: &Conn<'_>, req: &Request, out: &mut Vec<u8>) -> Result<(), Fail> {
    if c.neg.contexts.is_empty() {
        return Err(Fail::client(EINVAL, "no metadata context selected"));
    }
    if req.length == 0 {
        return Err(Fail::client(EINVAL, "zero-length block status"));
    }
    // One chunk per selected context; the last one ends the reply. Each is computed before
    // anything is sent, so a failure is still a clean error reply.
    let mut chunks = Vec::with_capacity(c.neg.contexts.len());
    for sel in &c.neg.contexts {
        let extents: Vec<(u64, u32)> = match &sel.context {
            Context::Allocation => c
                .neg
                .export
                .extents(req.offset, req.length)?
                .iter()
                .map(|e| (e.len, allocation_status(e)))
                .collect(),
            Context::Changed { base } => c
                .neg
                .export
                .changes_since(base, req.offset, req.length)?
                .ok_or_else(|| Fail {
                    errno: EIO,
                    why: format!("volume {base:?} is gone"),
                    client_fault: false,
                })?
                .iter()
                .map(|e| (e.len, u32::from(e.changed)))
                .collect(),
        };
        let clipped = clip(extents, req);
        if clipped.is_empty() {
            return Err(Fail {
                errno: EIO,
                why: "backend returned no extents".into(),
                client_fault: false,
            });
        }
        chunks.push(match c.neg.mode {
            HeaderMode::Compact => Chunk::BlockStatus {
                context: sel.id,
                // Compact requests are < 4 GiB long, so clipped extents fit in 32 bits.
                extents: clipped.iter().map(|&(n, f)| (n as u32, f)).collect(),
            },
            HeaderMode::Extended => Chunk::BlockStatusExt {
                context: sel.id,
                extents: clipped.iter().map(|&(n, f)| (n, u64::from(f))).collect(),
            },
        });
    }
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.iter().enumerate() {
        encode_chunk(c.neg.mode, i == last, req.cookie, req.offset, chunk, out);
    }
    send(c, [&out[..]]);
    Ok(())
}

/// Extents cut to the request (at most [`MAX_EXTENTS`], one with REQ_ONE), empty ones dropped.
fn clip(extents: Vec<(u64, u32)>, req: &Request) -> Vec<(u64, u32)> {
    let mut total = 0u64;
    let mut clipped = Vec::new();
    for (len, flags) in extents {
        if total >= req.length || clipped.len() >= MAX_EXTENTS {
            break;
        }
        let len = len.min(req.length - total);
        if len == 0 {
            continue;
        }
        total += len;
        clipped.push((len, flags));
        if req.flags & CMD_FLAG_REQ_ONE != 0 {
            break;
        }
    }
    clipped
}

/// Writes one complete reply (or batch of them), given as the parts in wire order; on failure
/// the connection is torn down (a reply cut in half cannot be recovered from).
fn send<'b>(c: &Conn<'_>, parts: impl IntoIterator<Item = &'b [u8]>) {
    let mut slices: Vec<IoSlice<'_>> =
        parts.into_iter().filter(|p| !p.is_empty()).map(IoSlice::new).collect();
    let _guard = c.writer.lock().unwrap_or_else(|e| e.into_inner());
    if c.dead.load(Ordering::Relaxed) {
        return;
    }
    let mut bufs = &mut slices[..];
    let mut w = c.sock;
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => {
                fail_conn(c, io::Error::from(io::ErrorKind::WriteZero));
                return;
            }
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                fail_conn(c, e);
                return;
            }
        }
    }
}

fn fail_conn(c: &Conn<'_>, e: io::Error) {
    c.log.warn(format_args!("export {:?}: reply failed, closing: {e}", c.neg.name));
    c.dead.store(true, Ordering::Relaxed);
    c.sock.shutdown(Shutdown::Both);
}
