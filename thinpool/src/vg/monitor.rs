//! One autoextend check, whatever grows: dmeventd's thin plugin, for both kinds of pool.
//!
//! The policy ([`super::autoextend`]) decides; a backend ([`Grower`]) reports a region's usage
//! and grows it (a volume group extends its `tdata`/`tmeta` LVs, a file pool grows its data
//! file); the [`Monitor`] keeps one back-off per region and emits one event per growth or
//! refusal: a log line through `tracing`, a line in the event log, and the returned
//! [`ExtendEvent`]. Refusals (no free extents) are retried with dmeventd's back-off; a
//! growth that fails counts as a failure too and is returned as an error.

use super::autoextend::{
    self, AutoextendDecision, AutoextendInput, Backoff, ExtendAction, ExtendEvent, Policy,
};
use super::error::Result;
use super::events::EventLog;
use super::format::{Extents, RegionKind};
use crate::units::Bytes;
use std::sync::{Mutex, MutexGuard};
use tracing::{info, warn};

/// What a backend reports of one region at a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionUsage {
    /// Bytes in use (used blocks × block size).
    pub used: Bytes,
    /// The region's size.
    pub size: Bytes,
    /// The unit the region grows by (a volume group's extent, a file pool's data block).
    pub extent_size: Bytes,
    /// How many of those units the region may still take.
    pub free: Extents,
}

/// What autoextend grows.
pub trait Grower {
    /// `kind`'s usage now, or None for a region this backend never grows.
    fn usage(&self, kind: RegionKind) -> Option<RegionUsage>;

    /// Grows `kind` by `n` units and makes the growth durable.
    fn grow(&self, kind: RegionKind, n: Extents) -> Result<()>;

    /// Where the room comes from, for log lines ("volume group …", "data file …").
    fn describe(&self) -> String;
}

/// The state of autoextend between checks: dmeventd's back-off per region, and where events
/// are written.
pub struct Monitor {
    /// [metadata, data].
    backoff: Mutex<[Backoff; 2]>,
    log: Option<EventLog>,
}

impl Monitor {
    pub fn new(log: Option<EventLog>) -> Monitor {
        Monitor { backoff: Mutex::new([Backoff::default(); 2]), log }
    }

    /// The event log, if events are written to one.
    pub fn log(&self) -> Option<&EventLog> {
        self.log.as_ref()
    }

    fn backoff(&self) -> MutexGuard<'_, [Backoff; 2]> {
        self.backoff.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One check of both regions: metadata first, running out of it is the worse failure.
    pub fn check_all(&self, grower: &dyn Grower, policy: Policy) -> Result<Vec<ExtendEvent>> {
        let mut out = Vec::new();
        for kind in [RegionKind::Metadata, RegionKind::Data] {
            out.extend(self.check(grower, kind, policy)?);
        }
        Ok(out)
    }

    /// One check of `kind`: grows it when the policy says so, or reports that it cannot
    /// (at most once per back-off period).
    pub fn check(
        &self,
        grower: &dyn Grower,
        kind: RegionKind,
        policy: Policy,
    ) -> Result<Option<ExtendEvent>> {
        let Some(u) = grower.usage(kind) else { return Ok(None) };
        let input = AutoextendInput {
            used: u.used,
            size: u.size,
            extent_size: u.extent_size,
            free: u.free,
            threshold: policy.threshold,
            percent: policy.percent,
        };
        let decision = match kind {
            RegionKind::Data => autoextend::data_decision(&input),
            RegionKind::Metadata => autoextend::metadata_decision(&input),
        };
        let slot = match kind {
            RegionKind::Metadata => 0,
            RegionKind::Data => 1,
        };
        let event = match decision {
            AutoextendDecision::Disabled | AutoextendDecision::Below => return Ok(None),
            AutoextendDecision::Grow(n) => {
                if let Err(e) = grower.grow(kind, n) {
                    // Reported by the caller, which logs it.
                    self.backoff()[slot].failed();
                    return Err(e);
                }
                self.backoff()[slot].succeeded();
                let e = ExtendEvent::new(kind, ExtendAction::Extended, &input, n);
                info!(region = kind.name(), extents = n.0, on = %grower.describe(), "{}", e.message);
                e
            }
            AutoextendDecision::NoSpace { wanted } => {
                let mut b = self.backoff();
                if !b[slot].ready() {
                    return Ok(None);
                }
                b[slot].failed();
                let e = ExtendEvent::new(kind, ExtendAction::NoSpace, &input, wanted);
                warn!(region = kind.name(), on = %grower.describe(), "{}", e.message);
                e
            }
        };
        // The region has grown (or the refusal stands) whether or not the record is written.
        if let Some(log) = &self.log {
            if let Err(e) = log.append(&event) {
                warn!(error = %crate::units::chain(&e), "could not append to the event log");
            }
        }
        Ok(Some(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vg::error::{VgError, VgErrorKind};
    use std::cell::RefCell;

    const MIB: u64 = 1 << 20;

    /// A region of 1 MiB extents whose usage and room the test sets; counts growths.
    struct Fake {
        used: RefCell<u64>,
        size: RefCell<Extents>,
        free: RefCell<Extents>,
        grows: RefCell<Vec<Extents>>,
    }

    impl Fake {
        fn new(used_mib: u64, size: u64, free: u64) -> Fake {
            Fake {
                used: RefCell::new(used_mib * MIB),
                size: RefCell::new(Extents(size)),
                free: RefCell::new(Extents(free)),
                grows: RefCell::new(Vec::new()),
            }
        }
    }

    impl Grower for Fake {
        fn usage(&self, kind: RegionKind) -> Option<RegionUsage> {
            (kind == RegionKind::Data).then(|| RegionUsage {
                used: Bytes::new(*self.used.borrow()),
                size: Bytes::new(self.size.borrow().0 * MIB),
                extent_size: Bytes::MIB,
                free: *self.free.borrow(),
            })
        }

        fn grow(&self, _: RegionKind, n: Extents) -> Result<()> {
            let mut free = self.free.borrow_mut();
            if n.0 > free.0 {
                return Err(VgError::new(VgErrorKind::NoSpace, "the fake has no room"));
            }
            free.0 -= n.0;
            self.size.borrow_mut().0 += n.0;
            self.grows.borrow_mut().push(n);
            Ok(())
        }

        fn describe(&self) -> String {
            "fake".into()
        }
    }

    const POLICY: Policy = Policy { threshold: 80, percent: 20 };

    fn logged(m: &Monitor) -> Vec<ExtendEvent> {
        m.log().unwrap().read().unwrap()
    }

    #[test]
    fn grows_by_percent_at_the_threshold_with_one_event() {
        let dir = tempfile::tempdir().unwrap();
        let m = Monitor::new(Some(EventLog::new(&dir.path().join("events"))));
        let f = Fake::new(79, 100, 1000);
        assert_eq!(m.check_all(&f, POLICY).unwrap(), [], "79 % is under 80 %");
        *f.used.borrow_mut() = 80 * MIB;
        let events = m.check_all(&f, POLICY).unwrap();
        assert_eq!(f.grows.borrow().as_slice(), [Extents(20)], "20 % of 100 extents");
        assert_eq!(events.len(), 1, "{events:?}");
        let e = &events[0];
        assert_eq!((e.action, e.extents), (ExtendAction::Extended, Extents(20)));
        assert_eq!((e.old_bytes, e.new_bytes), (Bytes::new(100 * MIB), Bytes::new(120 * MIB)));
        assert_eq!(logged(&m).len(), 1, "one line per growth");
        // 80 of 120: under the threshold again, so nothing more happens.
        assert_eq!(m.check_all(&f, POLICY).unwrap(), []);
        assert_eq!(f.grows.borrow().len(), 1);
        assert_eq!(logged(&m).len(), 1);
        // Threshold 100 turns it off however full the region is.
        *f.used.borrow_mut() = 120 * MIB;
        assert_eq!(m.check_all(&f, Policy { threshold: 100, percent: 20 }).unwrap(), []);
        // A threshold below 50 counts as 50: 59 of 120 is under it, 60 is at it.
        *f.used.borrow_mut() = 59 * MIB;
        assert_eq!(m.check_all(&f, Policy { threshold: 10, percent: 20 }).unwrap(), []);
        *f.used.borrow_mut() = 60 * MIB;
        let e = m.check_all(&f, Policy { threshold: 10, percent: 20 }).unwrap();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(logged(&m).len(), 2);
    }

    #[test]
    fn no_space_backs_off_then_retries_and_a_growth_resets_it() {
        let dir = tempfile::tempdir().unwrap();
        let m = Monitor::new(Some(EventLog::new(&dir.path().join("events"))));
        let f = Fake::new(90, 100, 0);
        let actions = |m: &Monitor| -> Vec<Option<ExtendAction>> {
            (0..8)
                .map(|_| m.check(&f, RegionKind::Data, POLICY).unwrap().map(|e| e.action))
                .collect()
        };
        let no = Some(ExtendAction::NoSpace);
        // Reported, then 1, 2, 4 checks skipped between reports.
        assert_eq!(actions(&m), [no, None, no, None, None, no, None, None]);
        assert!(f.grows.borrow().is_empty());
        assert_eq!(logged(&m).len(), 3, "one line per report, none per skipped check");
        assert_eq!(logged(&m)[0].extents, Extents(20), "what would have been added");
        // Room appears (a device was added): the next checks grow as soon as the back-off
        // lets one through, and a growth resets the back-off.
        *f.free.borrow_mut() = Extents(1000);
        let mut n = 0;
        let e = loop {
            n += 1;
            assert!(n <= 5, "never retried");
            if let Some(e) = m.check(&f, RegionKind::Data, POLICY).unwrap() {
                break e;
            }
        };
        assert_eq!(e.action, ExtendAction::Extended);
        assert_eq!(f.grows.borrow().len(), 1);
        // Full again right after the growth: reported at once, the back-off starts over.
        *f.used.borrow_mut() = 120 * MIB;
        *f.free.borrow_mut() = Extents(0);
        assert_eq!(actions(&m)[..3], [no, None, no]);
        // The metadata region, which the fake never grows, is never checked.
        assert_eq!(m.check(&f, RegionKind::Metadata, POLICY).unwrap(), None);
    }

    #[test]
    fn a_failed_growth_is_an_error_and_no_event() {
        let m = Monitor::new(None);
        let f = Fake::new(90, 100, 10);
        // The same region behind a backend whose growth fails (an I/O error): the error comes
        // back and nothing is reported as grown; the next check tries again.
        let g = FailingGrow(&f);
        let e = m.check(&g, RegionKind::Data, POLICY).unwrap_err();
        assert_eq!(e.kind(), VgErrorKind::Io, "{e}");
        assert!(f.grows.borrow().is_empty());
        assert_eq!(m.check(&f, RegionKind::Data, POLICY).unwrap().unwrap().extents, Extents(10));
    }

    struct FailingGrow<'a>(&'a Fake);

    impl Grower for FailingGrow<'_> {
        fn usage(&self, kind: RegionKind) -> Option<RegionUsage> {
            self.0.usage(kind)
        }
        fn grow(&self, _: RegionKind, _: Extents) -> Result<()> {
            Err(VgError::io("growing the fake", std::io::Error::other("EIO")))
        }
        fn describe(&self) -> String {
            "failing fake".into()
        }
    }
}
