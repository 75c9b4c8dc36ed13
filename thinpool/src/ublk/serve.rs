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
//! Buffers: each tag owns one buffer, and the driver hands a tag to this process until its
//! result is committed. Between the hand-off to a worker and the commit, only that worker
//! uses the tag's buffer; the queue thread takes it back to commit. Each buffer sits behind
//! its own mutex, which is never contended: it only proves that hand-off to the compiler.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex};

use libublk::helpers::IoBuf;
use libublk::io::{BufDescList, UblkDev, UblkIOCtx, UblkQueue};
use libublk::{BufDesc, UblkIORes};

use super::queue::{self, Request};
use crate::export::Export;

/// Worker threads per queue: requests of one queue in flight on the data disk at once. fio's
/// deepest job in the benchmarks is 16, and XFS's writeback rarely queues more per CPU.
pub const WORKERS: usize = 16;
/// A worker's stack: export calls walk btrees a few levels deep; nothing large lives there.
const WORKER_STACK: usize = 256 << 10;
/// The `op` byte of the eventfd poll's user_data (the tag bits are unused).
const WAKE_OP: u32 = 0xfe;

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
        run_queue(&q, id, export.size(), &work, &done_rx, &efd, &bufs);
        work.close();
    });
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
    size: u64,
    work: &Work,
    done: &mpsc::Receiver<(u16, i32)>,
    efd: &OwnedFd,
    bufs: &[Mutex<IoBuf<u8>>],
) {
    let qid = q.get_qid();
    let buf_len = q.dev.dev_info.max_io_buf_bytes as usize;
    let wake = UblkIOCtx::build_user_data(0, WAKE_OP, 0, true);
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
                        Ok(req) => work.push(tag, req),
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
                return;
            }
            Err(e) => {
                tracing::error!("ublk: device {id} queue {qid} stops serving: {e:?}");
                return;
            }
        }
    }
}
