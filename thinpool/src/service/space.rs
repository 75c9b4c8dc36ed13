//! Writes that need data blocks: the threshold kick after an allocation, waiting for room
//! when the data space is full (dm-thin's queue_if_no_space, bounded by `no_space_timeout`,
//! or `error_if_no_space`), and read-only mode when the metadata is exhausted.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{error, warn};

use super::{lock, Error, ErrorKind, ReadOnly, Result, Shared};
use crate::pdata::superblock::set_needs_check;
use crate::pool::Pool;
use crate::units::DataBlock;
use crate::vg::Policy;

impl Shared {
    pub(super) fn space_gen(&self) -> u64 {
        self.space_gen.load(Ordering::SeqCst)
    }

    pub(crate) fn notify_space(&self) {
        let _g = lock(&self.space);
        self.space_gen.fetch_add(1, Ordering::SeqCst);
        self.space_cv.notify_all();
    }

    /// Waits until the space generation moves past `gen` or `deadline`; false on timeout.
    pub(super) fn wait_space(&self, gen: u64, deadline: Option<Instant>) -> bool {
        let mut g = lock(&self.space);
        while self.space_gen.load(Ordering::SeqCst) == gen {
            match deadline {
                None => g = self.space_cv.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    g = self.space_cv.wait_timeout(g, d - now).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
        }
        true
    }

    pub(crate) fn kick(&self) {
        let mut k = lock(&self.kick);
        k.kicked = true;
        self.kick_cv.notify_all();
    }

    /// After an allocation: kick the autoextend thread once per region size when data or
    /// metadata usage reaches the threshold (the kernel's low-water-mark events).
    pub(super) fn after_alloc(&self) {
        let policy = Policy::of(&lock(&self.config));
        if policy.threshold >= 100 {
            return;
        }
        let (d, m) = (self.pool().data_usage(), self.pool().metadata_usage());
        let data = policy.reached(d.used, d.total)
            && self.kicked_at_total.swap(d.total.0, Ordering::SeqCst) != d.total.0;
        let meta = policy.reached(m.used, m.total)
            && self.kicked_at_meta.swap(m.total.0, Ordering::SeqCst) != m.total.0;
        if data || meta {
            self.kick();
        }
    }

    /// Runs a pool change that may need new data blocks. On NoSpace: metadata exhaustion
    /// makes the pool read-only; a full data space kicks autoextend and waits for room (or
    /// fails at once with error_if_no_space). `f` runs with no service lock held across the
    /// wait, and is retried from the start (pool writes are idempotent).
    pub(crate) fn with_space<T>(
        &self,
        doing: &dyn Fn() -> String,
        f: &dyn Fn(&Pool) -> crate::pool::Result<T>,
    ) -> Result<T> {
        let mut deadline: Option<Option<Instant>> = None;
        let mut quick = 0;
        loop {
            let gen = self.space_gen();
            let allocs = self.pool().data_allocations();
            let r = {
                let _g = self.writable()?;
                f(self.pool())
            };
            let e = match r {
                Ok(v) => {
                    // Thresholds only move when something was allocated; an in-place write
                    // takes no further lock.
                    if self.pool().data_allocations() != allocs {
                        self.after_alloc();
                    }
                    return Ok(v);
                }
                Err(e) => e,
            };
            match e.kind() {
                crate::pool::ErrorKind::NoSpace => {}
                crate::pool::ErrorKind::ReadOnly => {
                    self.enter_read_only(&format!("{}: {}", doing(), units::chain(&e)));
                    return Err(Error::pool(&doing(), e));
                }
                _ => return Err(Error::pool(&doing(), e)),
            }
            if self.pool().data_usage().free > DataBlock(0) {
                // Not the data space: either blocks came free meanwhile (retry) or the
                // metadata is exhausted.
                quick += 1;
                if quick <= 2 {
                    continue;
                }
                let why =
                    format!("metadata space exhausted while {}: {}", doing(), units::chain(&e));
                self.enter_read_only(&why);
                return Err(Error::new(
                    ErrorKind::ReadOnly,
                    format!("pool {} is read-only: {why}", self.name),
                ));
            }
            self.kick();
            let (error_now, secs) = {
                let c = lock(&self.config);
                (c.error_if_no_space, c.no_space_timeout)
            };
            if error_now {
                return Err(Error::new(
                    ErrorKind::NoSpace,
                    format!("{}: the pool's data space is full (error_if_no_space)", doing()),
                ));
            }
            let d = *deadline.get_or_insert_with(|| {
                (secs > 0).then(|| Instant::now() + Duration::from_secs(secs))
            });
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let woke = self.wait_space(gen, d);
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            if !woke {
                warn!(timeout = secs, "a write waited for data space and timed out");
                return Err(Error::new(
                    ErrorKind::NoSpace,
                    format!(
                        "{}: the pool's data space stayed full for {secs} s (no_space_timeout)",
                        doing()
                    ),
                ));
            }
            quick = 0;
        }
    }

    /// Makes every completed write durable. In read-only mode, succeeds only if everything
    /// was committed when the mode was entered.
    pub(crate) fn flush(&self) -> Result<()> {
        let g = self.ro.read().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = &*g {
            return if r.durable {
                Ok(())
            } else {
                Err(Error::new(
                    ErrorKind::ReadOnly,
                    format!("pool {} failed before its last commit: {}", self.name, r.why),
                ))
            };
        }
        // Pool::flush syncs the data device even when no mapping changed.
        self.pool().flush().map_err(|e| Error::pool("flushing the pool", e))
    }

    /// dm-thin's answer to a metadata failure: commit what can still be committed, set
    /// needs_check in the superblock and refuse every change from now on. Reads go on.
    pub(crate) fn enter_read_only(&self, why: &str) {
        let mut g = self.ro.write().unwrap_or_else(|e| e.into_inner());
        if g.is_some() {
            return;
        }
        // A pool that failed half-way refuses the commit: its last commit stays on disk.
        let durable = match self.pool().commit() {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %units::chain(&e), "could not commit before going read-only");
                false
            }
        };
        let set = self.metadata_device().and_then(|d| {
            set_needs_check(d.as_ref(), true).map_err(|e| {
                Error::pool(
                    "setting needs_check",
                    crate::pool::Error::pdata("setting needs_check", e),
                )
            })
        });
        if let Err(e) = set {
            error!(error = %units::chain(&e), "could not set needs_check in the superblock");
        }
        error!(pool = %self.name, reason = why, "pool is now read-only; needs_check is set");
        *g = Some(ReadOnly { why: why.to_owned(), durable });
    }
}
