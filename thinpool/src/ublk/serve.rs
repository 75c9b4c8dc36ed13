//! One queue of a device at work: the queue's thread and its workers.
//!
//! libublk keeps a queue's io_uring in its thread (thread-local), so fetching requests and
//! committing their results happen on that one thread. Serving a request is a blocking call
//! into the [`Export`] (a metadata lookup, then `pread`/`pwrite` on the data disk, a commit
//! when a mapping changed), so the queue thread hands each decoded request to one of
//! [`WORKERS`] worker threads and goes back to its ring. That keeps as many requests in
//! flight on the data disk as the submitter queued (fio's depth, XFS's writeback), as the
//! kernel's dm-thin does by remapping bios, instead of one at a time.
//!
//! A worker sends `(tag, result)` back over a channel and writes an eventfd; the queue's ring
//! has a poll on that eventfd among its own commands, so one wait covers both new requests
//! and finished ones. The queue thread then commits each result (`COMMIT_AND_FETCH_REQ`).
//!
//! Reads, and overwrites of blocks that are mapped and not shared, skip the hand-off when
//! nothing has to wait: the export answers where the bytes lie on the data device
//! ([`Direct`], with the pool's locks held until the I/O is done) and the queue thread
//! submits the `pread`/`pwrite` itself, as O_DIRECT reads and writes on its own ring, and
//! commits the request when they complete. Under emulation every thread switch and system
//! call is expensive; this path costs neither beyond the ring's own entry.
//!
//! Buffers: each tag owns one buffer, and the driver hands a tag to this process until its
//! result is committed. Between the hand-off to a worker and the commit, only that worker
//! uses the tag's buffer; the queue thread takes it back to commit. Each buffer sits behind
//! its own mutex, which is never contended: it only proves that hand-off to the compiler.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex};

use libublk::helpers::IoBuf;
use libublk::io::{BufDescList, UblkDev, UblkIOCtx, UblkQueue};
use libublk::{BufDesc, UblkIORes};

use super::queue::{self, Request};
use crate::export::Export;
use crate::io::{Direct, Run};

/// Worker threads per queue: requests of one queue in flight on the data disk at once. fio's
/// deepest job in the benchmarks is 16, and XFS's writeback rarely queues more per CPU.
pub const WORKERS: usize = 16;
/// A worker's stack: export calls walk btrees a few levels deep; nothing large lives there.
const WORKER_STACK: usize = 256 << 10;
/// The `op` byte of the eventfd poll's user_data (the tag bits are unused).
const WAKE_OP: u32 = 0xfe;
/// The `op` byte of a direct request's device I/O; the target-data bits hold the run's index.
const DIRECT_OP: u32 = 0xfd;
/// Ring entries per tag: its command, and up to [`crate::pool::MAX_DEVICE_RUNS`] device I/Os
/// of a direct request, with room to spare, so neither side of the ring ever fills (a full
/// completion queue would stall the ring).
const RING_PER_TAG: u32 = 8;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The requests waiting for a worker; `None` once the queue is down.
struct Work {
    queue: Mutex<Option<VecDeque<(u16, Request)>>>,
    ready: Condvar,
}

impl Work {
    fn push(&self, tag: u16, req: Request) {
        let mut q = lock(&self.queue);
        if let Some(q) = q.as_mut() {
            q.push_back((tag, req));
            self.ready.notify_one();
        }
    }

    /// The next request, or `None` when the queue is down.
    fn pop(&self) -> Option<(u16, Request)> {
        let mut q = lock(&self.queue);
        loop {
            match q.as_mut()?.pop_front() {
                Some(w) => return Some(w),
                None => q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    fn close(&self) {
        *lock(&self.queue) = None;
        self.ready.notify_all();
    }
}

/// Serves queue `qid` of `dev` until the device is stopped (or its io_uring torn down).
pub fn serve_queue(qid: u16, dev: &UblkDev, export: &dyn Export) {
    let id = dev.dev_info.dev_id;
    let bufs = dev.alloc_queue_io_bufs();
    let entries = u32::from(dev.dev_info.queue_depth) * RING_PER_TAG;
    if let Err(e) = init_ring(entries) {
        tracing::error!("ublk: queue {qid} of device {id}: io_uring of {entries} entries: {e:?}");
        return;
    }
    let q = match UblkQueue::new(qid, dev)
        .and_then(|q| q.submit_fetch_commands_unified(BufDescList::Slices(Some(&bufs))))
    {
        Ok(q) => q,
        Err(e) => {
            tracing::error!("ublk: queue {qid} of device {id}: {e:?}");
            return;
        }
    };
    let efd = match rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    ) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!("ublk: queue {qid} of device {id}: eventfd: {e}");
            return;
        }
    };
    // Moving an IoBuf keeps its allocation where the driver was told it is.
    let bufs: Vec<Mutex<IoBuf<u8>>> = bufs.into_iter().map(Mutex::new).collect();
    let work = Work { queue: Mutex::new(Some(VecDeque::new())), ready: Condvar::new() };
    let (done_tx, done_rx) = mpsc::channel::<(u16, i32)>();
    let mut drained = true;
    std::thread::scope(|s| {
        for w in 0..WORKERS {
            let (work, done, efd, bufs) = (&work, done_tx.clone(), &efd, &bufs);
            let spawned = std::thread::Builder::new()
                .name(format!("ublk{id}q{qid}w{w}"))
                .stack_size(WORKER_STACK)
                .spawn_scoped(s, move || worker(work, export, bufs, &done, efd));
            if let Err(e) = spawned {
                // Fewer workers only means fewer requests in flight; one is enough to serve.
                tracing::warn!("ublk: device {id} queue {qid}: worker {w}: {e}");
                if w == 0 {
                    work.close();
                    return;
                }
                break;
            }
        }
        drop(done_tx);
        drained = run_queue(&q, id, export, &work, &done_rx, &efd, &bufs);
        work.close();
    });
    if !drained {
        // Device I/Os may still land in these buffers: keep them for the process's life.
        std::mem::forget(bufs);
    }
}

/// The queue thread's ring (libublk keeps it thread-local), sized for direct requests.
fn init_ring(entries: u32) -> Result<(), libublk::UblkError> {
    libublk::ublk_init_task_ring(|cell| {
        if cell.get().is_none() {
            let ring = io_uring::IoUring::builder()
                .setup_cqsize(entries)
                .setup_coop_taskrun()
                .build(entries)
                .map_err(libublk::UblkError::IOError)?;
            cell.set(RefCell::new(ring))
                .map_err(|_| libublk::UblkError::OtherError(-libc::EEXIST))?;
        }
        Ok(())
    })
}

/// A direct request on its way: the plan (holding the pool's locks), and its device I/Os.
struct InFlight<'a> {
    plan: Direct<'a>,
    pending: usize,
    /// The request's length, or the first error (a negative errno).
    res: i32,
}

/// Starts `req` on tag `tag` as a direct request if the export offers a plan: zeros filled
/// in, one ring entry per device run. `None`: the request needs a worker.
fn start_direct<'a>(
    q: &UblkQueue<'_>,
    export: &'a dyn Export,
    tag: u16,
    req: &Request,
    buf: &Mutex<IoBuf<u8>>,
) -> Option<InFlight<'a>> {
    let (plan, write, len) = match *req {
        Request::Read { offset, len } => (export.direct_read(offset, len)?, false, len),
        Request::Write { offset, len, fua } => {
            let b = lock(buf);
            (export.direct_write(offset, &b.as_slice()[..len], fua)?, true, len)
        }
        _ => return None,
    };
    // The buffer stays where it is (the driver was told its address); only the kernel uses
    // it until the request is committed, as only a worker would on the other path.
    let base = {
        let mut b = lock(buf);
        for r in &plan.runs {
            if let Run::Zeros { at, len } = *r {
                b.as_mut_slice()[at..at + len].fill(0);
            }
        }
        b.as_mut_ptr()
    };
    let mut f = InFlight { pending: 0, res: len as i32, plan };
    for (i, r) in f.plan.runs.iter().enumerate() {
        let Run::Device { at, len, fd, pos } = *r else { continue };
        // The plan keeps `fd` open until it is dropped, after its last I/O completed.
        let fd = io_uring::types::Fd(fd);
        let ptr = base.wrapping_add(at);
        let sqe = if write {
            io_uring::opcode::Write::new(fd, ptr, len as u32).offset(pos).build()
        } else {
            io_uring::opcode::Read::new(fd, ptr, len as u32).offset(pos).build()
        };
        let sqe = sqe.user_data(UblkIOCtx::build_user_data(tag, DIRECT_OP, i as u32, true));
        if let Err(e) = q.ublk_submit_sqe_sync(sqe) {
            // The ring is sized never to be full; should it fail anyway, what was submitted
            // completes and the request fails.
            tracing::error!(
                "ublk: queue {}: submitting a device I/O of tag {tag}: {e:?}",
                q.get_qid()
            );
            f.res = -libc::EIO;
            break;
        }
        f.pending += 1;
    }
    Some(f)
}

/// Accounts one device I/O of a direct request; the request's result once all are done.
fn finish_direct(slot: &mut Option<InFlight<'_>>, run: usize, res: i32) -> Option<i32> {
    let f = slot.as_mut()?;
    let want = match f.plan.runs.get(run) {
        Some(Run::Device { len, .. }) => *len as i32,
        _ => return None,
    };
    if f.res >= 0 && res != want {
        // A short transfer inside the device cannot happen; say EIO rather than retry.
        f.res = if res < 0 { res } else { -libc::EIO };
    }
    f.pending -= 1;
    if f.pending > 0 {
        return None;
    }
    // Dropping the plan releases the pool's locks (and counts a write) before the ack.
    slot.take().map(|f| f.res)
}

/// A worker: serves requests until the queue is down.
fn worker(
    work: &Work,
    export: &dyn Export,
    bufs: &[Mutex<IoBuf<u8>>],
    done: &mpsc::Sender<(u16, i32)>,
    efd: &OwnedFd,
) {
    while let Some((tag, req)) = work.pop() {
        let res = {
            let mut buf = lock(&bufs[usize::from(tag)]);
            queue::serve(export, req, buf.as_mut_slice())
        };
        if done.send((tag, res)).is_err() {
            return;
        }
        // The counter only wakes the queue thread; a failure (it cannot overflow in practice)
        // would leave the result for the next wake.
        let _ = rustix::io::write(efd, &1u64.to_ne_bytes());
    }
}

/// The queue thread: fetch, dispatch, commit, until the queue is down.
fn run_queue(
    q: &UblkQueue<'_>,
    id: u32,
    export: &dyn Export,
    work: &Work,
    done: &mpsc::Receiver<(u16, i32)>,
    efd: &OwnedFd,
    bufs: &[Mutex<IoBuf<u8>>],
) -> bool {
    let qid = q.get_qid();
    let size = export.size();
    let buf_len = q.dev.dev_info.max_io_buf_bytes as usize;
    let wake = UblkIOCtx::build_user_data(0, WAKE_OP, 0, true);
    let target = UblkIOCtx::build_user_data(0, 0, 0, true);
    let mut direct: Vec<Option<InFlight<'_>>> = Vec::new();
    direct.resize_with(usize::from(q.dev.dev_info.queue_depth), || None);
    let commit = |tag: u16, res: i32| {
        let buf = lock(&bufs[usize::from(tag)]);
        let desc = BufDesc::Slice(buf.as_slice());
        if let Err(e) = q.complete_io_cmd_unified(tag, desc, Ok(UblkIORes::Result(res))) {
            tracing::error!("ublk: device {id} queue {qid}: committing tag {tag}: {e:?}");
        }
    };
    let arm = || {
        let sqe = io_uring::opcode::PollAdd::new(
            io_uring::types::Fd(efd.as_fd().as_raw_fd()),
            libc::POLLIN as u32,
        )
        .build()
        .user_data(wake);
        if let Err(e) = q.ublk_submit_sqe_sync(sqe) {
            tracing::error!("ublk: device {id} queue {qid}: polling the eventfd: {e:?}");
        }
    };
    arm();
    loop {
        let mut woken = false;
        // libublk's `wait_and_handle_io` ends the queue on any error of the wait, EINTR
        // included; a device whose queue thread is gone hangs its users, so this loop only
        // ends when the queue is down (device stopped, or aborted) and says why.
        let r = q.flush_and_wake_io_tasks(
            |data, cqe, _last| {
                if data == wake {
                    woken = true;
                } else if data & target != 0 {
                    if UblkIOCtx::user_data_to_op(data) == DIRECT_OP {
                        let tag = UblkIOCtx::user_data_to_tag(data) as u16;
                        let run = ((data >> 24) & 0xffff) as usize;
                        let slot = direct.get_mut(usize::from(tag));
                        if let Some(res) = slot.and_then(|s| finish_direct(s, run, cqe.result())) {
                            commit(tag, res);
                        }
                    }
                } else if cqe.result() == libublk::sys::UBLK_IO_RES_OK as i32 {
                    // An io command (the only other thing on this ring): a new request.
                    // UBLK_IO_RES_ABORT is a queue going down, and nothing to serve.
                    let tag = UblkIOCtx::user_data_to_tag(data) as u16;
                    let iod = q.get_iod(tag);
                    match queue::decode(
                        iod.op_flags,
                        iod.start_sector,
                        iod.nr_sectors,
                        size,
                        buf_len,
                    ) {
                        Ok(req) => {
                            match start_direct(q, export, tag, &req, &bufs[usize::from(tag)]) {
                                Some(f) if f.pending == 0 => {
                                    let res = f.res;
                                    drop(f);
                                    commit(tag, res);
                                }
                                Some(f) => direct[usize::from(tag)] = Some(f),
                                None => work.push(tag, req),
                            }
                        }
                        Err(e) => commit(tag, e.errno()),
                    }
                }
            },
            1,
        );
        if woken {
            let mut n = [0u8; 8];
            let _ = rustix::io::read(efd, &mut n);
            arm();
        }
        // Whatever finished meanwhile, not only on a wake: it saves a round trip.
        while let Ok((tag, res)) = done.try_recv() {
            commit(tag, res);
        }
        match r {
            Ok(_) => {}
            Err(libublk::UblkError::IOError(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(libublk::UblkError::QueueIsDown) => {
                tracing::info!("ublk: device {id} queue {qid} is down");
                break;
            }
            Err(e) => {
                tracing::error!("ublk: device {id} queue {qid} stops serving: {e:?}");
                break;
            }
        }
    }
    drain(&mut direct, target)
}

/// Waits for the device I/Os of direct requests still in flight (the device is going away,
/// so they are not committed): the kernel writes into their buffers until they complete.
/// False when the ring failed first; the caller must then never free the buffers.
fn drain(direct: &mut [Option<InFlight<'_>>], target: u64) -> bool {
    while direct.iter().any(Option::is_some) {
        let done = libublk::io::with_task_io_ring_mut(|ring| {
            ring.submit_and_wait(1)?;
            Ok::<_, std::io::Error>(
                ring.completion().map(|c| (c.user_data(), c.result())).collect::<Vec<_>>(),
            )
        });
        match done {
            Ok(done) => {
                for (data, res) in done {
                    if data & target != 0 && UblkIOCtx::user_data_to_op(data) == DIRECT_OP {
                        let tag = UblkIOCtx::user_data_to_tag(data) as usize;
                        let run = ((data >> 24) & 0xffff) as usize;
                        if let Some(slot) = direct.get_mut(tag) {
                            finish_direct(slot, run, res);
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::error!("ublk: waiting for device I/Os in flight: {e}");
                return false;
            }
        }
    }
    true
}
