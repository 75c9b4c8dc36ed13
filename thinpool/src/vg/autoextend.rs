//! Autoextend policy and the free-space gate, as pure functions.
//!
//! LVM's `lvextend --use-policies` (run by dmeventd for a monitored pool): once usage reaches
//! the threshold, grow the region by the larger of `percent` of its current size and what
//! brings usage back under the threshold, limited by the free extents. lvm.conf(5),
//! `activation/thin_pool_autoextend_threshold`: "Setting this to 100 disables automatic
//! extension. The minimum value is 50 (a smaller value is treated as 50.)"; `_percent` is the
//! step in percent of the current size (0 adds nothing, so it disables too). Metadata uses the
//! lower of the policy threshold and the kernel's own low-water threshold (100 % − min(25 %,
//! 4 MiB)), and grows by 1 % more to cover what the kernel consumes during the resize. With no
//! free extents, the attempt fails and is retried with exponential back-off (skip 1, 2, 4 …
//! 256 checks), as dmeventd does. [`super::monitor`] runs this policy against a pool.

use super::config::PoolConfig;
use super::format::{Extents, RegionKind};
use crate::pool::SpaceUsage;
use crate::units::{Bytes, DataBlock, MetaBlock};
use serde::{Deserialize, Serialize};
use std::fmt;

/// `dm.thinp_autoextend_threshold` and `dm.thinp_autoextend_percent`, as LVM reads its
/// `thin_pool_autoextend_threshold` and `_percent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Usage in percent at which a region grows (100 or more: never).
    pub threshold: u32,
    /// Growth step, in percent of the region's current size.
    pub percent: u32,
}

impl Policy {
    pub fn of(config: &PoolConfig) -> Policy {
        Policy { threshold: config.autoextend_threshold, percent: config.autoextend_percent }
    }

    /// Threshold 100 (or percent 0) turns autoextend off.
    pub fn enabled(self) -> bool {
        self.threshold < 100 && self.percent > 0
    }

    /// Whether `used` of `size` has reached the threshold; never for an empty region or a
    /// threshold of 100. The service's low-water kicks and the decision share this test.
    pub fn reached<B: Into<u64>>(self, used: B, size: B) -> bool {
        reached(used.into(), size.into(), self.threshold)
    }
}

/// lvm.conf(5): a threshold below 50 % counts as 50 % (and 100 % disables); the low-water
/// mark of the pool's table follows the same number.
pub fn effective_threshold(threshold: u32) -> u32 {
    threshold.clamp(50, 100)
}

/// What one check sees of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoextendInput {
    /// Bytes in use (used blocks × block size).
    pub used: Bytes,
    /// The region's size.
    pub size: Bytes,
    pub extent_size: Bytes,
    /// Extents the region may take: the group's free extents (and, for metadata, no more than
    /// the room left under dm-thin's maximum).
    pub free: Extents,
    /// `dm.thinp_autoextend_threshold`.
    pub threshold: u32,
    /// `dm.thinp_autoextend_percent`.
    pub percent: u32,
}

impl AutoextendInput {
    pub fn policy(&self) -> Policy {
        Policy { threshold: self.threshold, percent: self.percent }
    }
}

/// What the policy says to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoextendDecision {
    /// Threshold 100 (or percent 0): autoextend is off.
    Disabled,
    /// Usage is under the threshold.
    Below,
    /// Grow by this many extents (possibly fewer than wanted when the group is short).
    Grow(Extents),
    /// Over the threshold and the group has no free extent; `wanted` is what would have been
    /// added.
    NoSpace { wanted: Extents },
}

/// Whether `used` of `size` has reached `threshold` percent (as raised by LVM); never for an
/// empty region or a threshold of 100 or more (autoextend off).
fn reached(used: u64, size: u64, threshold: u32) -> bool {
    threshold < 100
        && size > 0
        && u128::from(used) * 100 >= u128::from(effective_threshold(threshold)) * u128::from(size)
}

fn decide(i: &AutoextendInput, threshold: u32, extra_percent: u32) -> AutoextendDecision {
    let extent_size = i.extent_size.get();
    if !i.policy().enabled() || extent_size == 0 {
        return AutoextendDecision::Disabled;
    }
    if !reached(i.used.get(), i.size.get(), threshold) {
        return AutoextendDecision::Below;
    }
    let t = u128::from(effective_threshold(threshold));
    let (used, size) = (u128::from(i.used.get()), u128::from(i.size.get()));
    // Smallest size with used/size strictly under the threshold.
    let target = used * 100 / t + 1;
    let needed = target.saturating_sub(size);
    let step = size * i.percent as u128 / 100;
    let grow = needed.max(step) + size * extra_percent as u128 / 100;
    let wanted = grow.div_ceil(extent_size as u128).max(1);
    let wanted = Extents(wanted.min(u64::MAX as u128) as u64);
    if i.free.0 == 0 {
        AutoextendDecision::NoSpace { wanted }
    } else {
        AutoextendDecision::Grow(Extents(wanted.0.min(i.free.0)))
    }
}

/// The data region's policy.
pub fn data_decision(i: &AutoextendInput) -> AutoextendDecision {
    decide(i, i.threshold, 0)
}

/// The metadata region's policy: the kernel's low-water threshold caps the policy threshold.
pub fn metadata_decision(i: &AutoextendInput) -> AutoextendDecision {
    let kernel = if i.size == Bytes::ZERO {
        75
    } else {
        let reserve = ((4u128 << 20) * 100).div_ceil(u128::from(i.size.get())).min(25) as u32;
        100 - reserve
    };
    decide(i, i.threshold.min(kernel), 1)
}

/// dmeventd's back-off after a failed extension: skip 1, 2, 4 … 256 checks before retrying.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backoff {
    skip: u32,
    remaining: u32,
}

impl Backoff {
    /// True when this check may try to extend; counts down skipped checks otherwise.
    pub fn ready(&mut self) -> bool {
        if self.remaining > 0 {
            self.remaining -= 1;
            false
        } else {
            true
        }
    }

    pub fn failed(&mut self) {
        self.skip = (self.skip * 2).clamp(1, 256);
        self.remaining = self.skip;
    }

    pub fn succeeded(&mut self) {
        *self = Self::default();
    }
}

/// Which pool space a free-space refusal is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Data,
    Metadata,
}

/// Docker's `dm.min_free_space` refusal, with Docker's wording.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub struct MinFreeSpaceError {
    pub space: Space,
    pub free: u64,
    pub minimum: u64,
}

impl fmt::Display for MinFreeSpaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (free, min) = (self.free, self.minimum);
        match self.space {
            Space::Data => write!(
                f,
                "Thin Pool has {free} free data blocks which is less than minimum required {min} \
                 free data blocks. Create more free space in thin pool or use dm.min_free_space \
                 option to change behavior"
            ),
            Space::Metadata => write!(
                f,
                "Thin Pool has {free} free metadata blocks which is less than minimum required \
                 {min} free metadata blocks. Create more free metadata space in thin pool or use \
                 dm.min_free_space option to change behavior"
            ),
        }
    }
}

/// The least number of free blocks `pct` % of `total` asks for (at least 1; 0 % disables).
pub fn min_free_blocks<B: Into<u64> + From<u64>>(total: B, pct: u32) -> B {
    if pct == 0 {
        B::from(0)
    } else {
        B::from(((total.into() as u128 * pct as u128 / 100) as u64).max(1))
    }
}

/// Docker's gate before every new thin volume: data, then metadata, must keep `pct` % free.
pub fn check_min_free_space(
    data: SpaceUsage<DataBlock>,
    meta: SpaceUsage<MetaBlock>,
    pct: u32,
) -> Result<(), MinFreeSpaceError> {
    let min = min_free_blocks(data.total, pct);
    if data.free < min {
        return Err(MinFreeSpaceError { space: Space::Data, free: data.free.0, minimum: min.0 });
    }
    let min = min_free_blocks(meta.total, pct);
    if meta.free < min {
        return Err(MinFreeSpaceError {
            space: Space::Metadata,
            free: meta.free.0,
            minimum: min.0,
        });
    }
    Ok(())
}

/// What happened at one autoextend check, as the event log records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtendAction {
    /// The region grew.
    Extended,
    /// Over the threshold with no free extents; the pool keeps filling.
    NoSpace,
}

/// One autoextend event: a JSON line in the event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtendEvent {
    /// RFC 3339, UTC, filled in by [`super::EventLog::append`] when empty.
    #[serde(default)]
    pub time: String,
    /// "tdata" or "tmeta".
    pub region: String,
    pub action: ExtendAction,
    /// Usage that triggered the check, in whole percent.
    pub used_percent: u32,
    pub old_bytes: Bytes,
    pub new_bytes: Bytes,
    pub extents: Extents,
    pub message: String,
}

impl fmt::Display for ExtendEvent {
    /// One line for `thinpool events`: time, region, action, message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            ExtendAction::Extended => "extended",
            ExtendAction::NoSpace => "no_space",
        };
        write!(f, "{} {} {action} {}", self.time, self.region, self.message)
    }
}

impl ExtendEvent {
    pub fn new(
        kind: RegionKind,
        action: ExtendAction,
        input: &AutoextendInput,
        extents: Extents,
    ) -> Self {
        let used_percent = if input.size == Bytes::ZERO {
            100
        } else {
            (u128::from(input.used.get()) * 100 / u128::from(input.size.get())) as u32
        };
        let new_bytes = match action {
            ExtendAction::Extended => input.size + input.extent_size * extents.0,
            ExtendAction::NoSpace => input.size,
        };
        let message = match action {
            ExtendAction::Extended => format!(
                "{} at {used_percent}% (threshold {}%): extended by {extents} extents to {new_bytes} bytes",
                kind.name(),
                input.threshold
            ),
            ExtendAction::NoSpace => format!(
                "{} at {used_percent}% (threshold {}%): insufficient free space in the volume group \
                 ({extents} extents wanted); add a device with `extend`",
                kind.name(),
                input.threshold
            ),
        };
        Self {
            time: String::new(),
            region: kind.name().to_owned(),
            action,
            used_percent,
            old_bytes: input.size,
            new_bytes,
            extents,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const MIB: u64 = 1 << 20;

    fn input(used: u64, size: u64, free: u64, threshold: u32, percent: u32) -> AutoextendInput {
        AutoextendInput {
            used: Bytes::new(used),
            size: Bytes::new(size),
            extent_size: Bytes::new(4 * MIB),
            free: Extents(free),
            threshold,
            percent,
        }
    }

    #[test]
    fn data_policy_table() {
        use AutoextendDecision::*;
        let g = 1024 * MIB;
        let m = 1000 * MIB;
        let cases = [
            // lvm.conf's example: threshold 70, percent 20: a 1G pool past 700M grows to 1.2G,
            // then past 840M to 1.44G.
            (input(701 * MIB, m, 1000, 70, 20), Grow(Extents(50))),
            (input(699 * MIB, m, 1000, 70, 20), Below),
            (input(841 * MIB, 1200 * MIB, 1000, 70, 20), Grow(Extents(60))),
            // "At or above": exactly the threshold triggers.
            (input(800 * MIB, m, 1000, 80, 20), Grow(Extents(50))),
            (input(800 * MIB - 1, m, 1000, 80, 20), Below),
            // Far over: the amount needed to get under the threshold wins over the 20 % step.
            (input(g, g, 1000, 80, 20), Grow(Extents(65))), // 1G/0.8 = 1280M (+1 byte) -> 257 MiB
            // Threshold below 50 counts as 50.
            (input(g / 2, g, 1000, 10, 20), Grow(Extents(52))),
            (input(g / 2 - 1, g, 1000, 10, 20), Below),
            // Threshold 100 disables.
            (input(g, g, 1000, 100, 20), Disabled),
            // Limited by free extents, and none at all reports what was wanted.
            (input(g, g, 7, 80, 20), Grow(Extents(7))),
            (input(g, g, 0, 80, 20), NoSpace { wanted: Extents(65) }),
            // A tiny region still grows by at least one extent.
            (input(4 * MIB, 4 * MIB, 10, 80, 1), Grow(Extents(1))),
            (input(0, 0, 10, 80, 20), Below),
        ];
        for (i, (inp, want)) in cases.iter().enumerate() {
            assert_eq!(data_decision(inp), *want, "case {i}: {inp:?}");
        }
    }

    #[test]
    fn grown_region_is_back_under_threshold() {
        for used_pct in [80u64, 85, 90, 99, 100] {
            let size = 1000 * 4 * MIB;
            let used = size * used_pct / 100;
            let AutoextendDecision::Grow(e) = data_decision(&input(used, size, 1 << 20, 80, 5))
            else {
                panic!("expected growth at {used_pct}%");
            };
            let new = size + e.0 * 4 * MIB;
            assert!(used * 100 < 80 * new, "{used_pct}%: {used}/{new} still at/over 80 %");
        }
    }

    #[test]
    fn metadata_policy_uses_kernel_threshold_and_one_percent_more() {
        use AutoextendDecision::*;
        // 8 MiB tmeta: the kernel's 4 MiB low-water is 50 % -> threshold min(80, 75) = 75.
        let small = input(6 * MIB, 8 * MIB, 100, 80, 20);
        assert_eq!(metadata_decision(&small), Grow(Extents(1)));
        assert_eq!(data_decision(&small), Below, "data would wait for 80 %");
        // 1 GiB tmeta: kernel threshold 100 - 1 (4 MiB of 1 GiB rounds up to 1 %) = 99,
        // policy 80 wins; step 20 % + 1 % = 215 MiB -> 54 extents.
        let g = 1024 * MIB;
        assert_eq!(metadata_decision(&input(g * 80 / 100 + 1, g, 1000, 80, 20)), Grow(Extents(54)));
        assert_eq!(metadata_decision(&input(g * 80 / 100, g, 1000, 80, 20)), Below);
        assert_eq!(metadata_decision(&input(g, g, 1000, 100, 20)), Disabled);
    }

    #[test]
    fn backoff_doubles_to_256_and_resets() {
        let mut b = Backoff::default();
        assert!(b.ready());
        let mut skipped = Vec::new();
        for _ in 0..10 {
            b.failed();
            let mut n = 0;
            while !b.ready() {
                n += 1;
            }
            skipped.push(n);
        }
        assert_eq!(skipped, [1, 2, 4, 8, 16, 32, 64, 128, 256, 256]);
        b.failed();
        b.succeeded();
        assert!(b.ready());
    }

    #[test]
    fn min_free_space_messages_are_dockers() {
        fn check(
            data_free: u64,
            data_total: u64,
            meta_free: u64,
            meta_total: u64,
            pct: u32,
        ) -> Result<(), MinFreeSpaceError> {
            fn usage<B: Copy + std::ops::Sub<Output = B>>(free: B, total: B) -> SpaceUsage<B> {
                SpaceUsage { total, used: total - free, free }
            }
            check_min_free_space(
                usage(DataBlock(data_free), DataBlock(data_total)),
                usage(MetaBlock(meta_free), MetaBlock(meta_total)),
                pct,
            )
        }
        assert_eq!(check(100, 1000, 50, 500, 10), Ok(()));
        let e = check(99, 1000, 50, 500, 10).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Thin Pool has 99 free data blocks which is less than minimum required 100 free data \
             blocks. Create more free space in thin pool or use dm.min_free_space option to \
             change behavior"
        );
        let e = check(100, 1000, 49, 500, 10).unwrap_err();
        assert_eq!(e.space, Space::Metadata);
        assert_eq!(
            e.to_string(),
            "Thin Pool has 49 free metadata blocks which is less than minimum required 50 free \
             metadata blocks. Create more free metadata space in thin pool or use \
             dm.min_free_space option to change behavior"
        );
        // At least one block is required whenever the option is on; 0 % turns it off.
        assert_eq!(min_free_blocks(DataBlock(5), 10), DataBlock(1));
        assert_eq!(check(0, 5, 1, 5, 10).unwrap_err().space, Space::Data);
        assert_eq!(check(0, 5, 0, 5, 0), Ok(()));
    }

    #[test]
    fn event_text_names_region_and_sizes() {
        let i = input(900 * MIB, 1000 * MIB, 10, 80, 20);
        let e = ExtendEvent::new(RegionKind::Data, ExtendAction::Extended, &i, Extents(50));
        assert_eq!(e.used_percent, 90);
        assert_eq!(e.new_bytes, Bytes::new(1200 * MIB));
        assert!(e.message.starts_with("tdata at 90% (threshold 80%): extended by 50 extents"));
        let shown = ExtendEvent { time: "2026-11-22T23:00:00Z".into(), ..e.clone() }.to_string();
        assert!(shown.starts_with("2026-11-22T23:00:00Z tdata extended tdata at 90%"), "{shown}");
        let n = ExtendEvent::new(RegionKind::Metadata, ExtendAction::NoSpace, &i, Extents(50));
        assert_eq!(n.new_bytes, n.old_bytes);
        assert!(n.message.contains("insufficient free space"));
    }
}
