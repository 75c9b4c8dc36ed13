//! A fault-injecting device for tests: power cuts with a torn write, and EIO on chosen ranges.
//!
//! The wrapped device holds what is *persisted*. Until the cut, every write goes through to it.
//! Write number N (counting from 0) is the cut: only its first `torn_sectors` whole 512-byte
//! sectors reach the wrapped device, and every later write and flush is dropped there. The
//! device keeps serving reads as if nothing happened (a volatile cache that will be lost), so
//! the code under test carries on; the test then takes [`FaultyDevice::persisted_image`] and
//! reopens from it, as after a real power cut.

use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use super::BlockDevice;

/// What to break.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    /// The write (0-based count of `write_at` calls) at which power is cut.
    pub cut_at_write: Option<u64>,
    /// How many whole sectors of the cut write land (clamped to the write's length).
    pub torn_sectors: u64,
    /// Byte ranges whose reads fail with EIO.
    pub fail_reads: Vec<Range<u64>>,
    /// Byte ranges whose writes fail with EIO.
    pub fail_writes: Vec<Range<u64>>,
}

#[derive(Default)]
struct State {
    plan: FaultPlan,
    /// Writes after the cut, in order: visible to reads, never persisted.
    volatile: Vec<(u64, Vec<u8>)>,
}

/// The power supply: one write counter and one cut for every device plugged into it, so a
/// power cut stops the metadata and the data device at the same moment.
#[derive(Default)]
pub struct Power {
    inner: Mutex<PowerState>,
}

#[derive(Default)]
struct PowerState {
    writes: u64,
    cut: bool,
    cut_at: Option<u64>,
    torn_sectors: u64,
}

impl Power {
    fn state(&self) -> std::sync::MutexGuard<'_, PowerState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts power at write number `n` (counted over all devices); `torn_sectors` of that
    /// write land.
    pub fn cut_at(&self, n: u64, torn_sectors: u64) {
        let mut s = self.state();
        s.cut_at = Some(n);
        s.torn_sectors = torn_sectors;
    }

    pub fn writes(&self) -> u64 {
        self.state().writes
    }

    pub fn is_cut(&self) -> bool {
        self.state().cut
    }
}

/// Wraps a device and breaks it according to a [`FaultPlan`] (tests only).
pub struct FaultyDevice {
    inner: Arc<dyn BlockDevice>,
    state: Mutex<State>,
    power: Arc<Power>,
}

fn overlaps(ranges: &[Range<u64>], offset: u64, len: usize) -> bool {
    let end = offset.saturating_add(len as u64);
    ranges.iter().any(|r| r.start < end && offset < r.end)
}

fn eio(dev: &str, op: &str, offset: u64, len: usize) -> io::Error {
    io::Error::other(format!("{dev}: injected EIO on {op} of {len} bytes at {offset}"))
}

impl FaultyDevice {
    pub fn new(inner: Arc<dyn BlockDevice>, plan: FaultPlan) -> Self {
        let power = Arc::new(Power::default());
        if let Some(n) = plan.cut_at_write {
            power.cut_at(n, plan.torn_sectors);
        }
        Self { inner, state: Mutex::new(State { plan, ..State::default() }), power }
    }

    /// A device on a shared power supply (the plan's cut fields are ignored: cut the power).
    pub fn on_power(inner: Arc<dyn BlockDevice>, plan: FaultPlan, power: Arc<Power>) -> Self {
        Self { inner, state: Mutex::new(State { plan, ..State::default() }), power }
    }

    pub fn power(&self) -> &Arc<Power> {
        &self.power
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the plan's EIO ranges (the write counter keeps counting).
    pub fn set_plan(&self, plan: FaultPlan) {
        self.state().plan = plan;
    }

    /// Number of `write_at` calls seen so far (on every device sharing the power).
    pub fn writes(&self) -> u64 {
        self.power.writes()
    }

    /// Whether the power cut has happened.
    pub fn is_cut(&self) -> bool {
        self.power.is_cut()
    }

    /// What survives the power cut: the wrapped device's whole contents.
    pub fn persisted_image(&self) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; self.inner.size() as usize];
        self.inner.read_at(&mut out, 0)?;
        Ok(out)
    }
}

impl BlockDevice for FaultyDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let st = self.state();
        if overlaps(&st.plan.fail_reads, offset, buf.len()) {
            return Err(eio(&self.inner.describe(), "read", offset, buf.len()));
        }
        self.inner.read_at(buf, offset)?;
        let end = offset + buf.len() as u64;
        for (w_off, data) in &st.volatile {
            let w_end = w_off + data.len() as u64;
            let (lo, hi) = (offset.max(*w_off), end.min(w_end));
            if lo < hi {
                buf[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&data[(lo - w_off) as usize..(hi - w_off) as usize]);
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.state();
        if overlaps(&st.plan.fail_writes, offset, buf.len()) {
            return Err(eio(&self.inner.describe(), "write", offset, buf.len()));
        }
        // Range errors are reported whether or not power is cut.
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= self.inner.size() => {}
            _ => return self.inner.write_at(buf, offset),
        }
        let mut p = self.power.state();
        let n = p.writes;
        p.writes += 1;
        if p.cut {
            st.volatile.push((offset, buf.to_vec()));
            return Ok(());
        }
        if p.cut_at == Some(n) {
            p.cut = true;
            let landed = (p.torn_sectors * 512).min(buf.len() as u64) as usize;
            if landed > 0 {
                self.inner.write_at(&buf[..landed], offset)?;
            }
            st.volatile.push((offset, buf.to_vec()));
            return Ok(());
        }
        self.inner.write_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        if self.power.is_cut() {
            return Ok(());
        }
        self.inner.flush()
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn grow(&self, new_size: u64) -> io::Result<()> {
        self.inner.grow(new_size)
    }

    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::io::MemDevice;

    #[test]
    fn faulty_device_without_faults_keeps_the_contract() {
        let dev = FaultyDevice::new(Arc::new(MemDevice::new(1 << 16, "mem")), FaultPlan::default());
        crate::io::contract::check(&dev);
    }

    #[test]
    fn faulty_device_after_a_cut_keeps_the_contract_for_reads() {
        // After the cut the device still behaves like a device to its user.
        let plan = FaultPlan { cut_at_write: Some(0), ..FaultPlan::default() };
        let dev = FaultyDevice::new(Arc::new(MemDevice::new(1 << 16, "mem")), plan);
        crate::io::contract::check(&dev);
        assert!(dev.is_cut());
        assert!(dev.persisted_image().unwrap().iter().all(|&b| b == 0), "nothing persisted");
    }

    #[test]
    fn cut_tears_the_write_and_drops_the_rest() {
        let inner = Arc::new(MemDevice::new(1 << 16, "mem"));
        let plan = FaultPlan { cut_at_write: Some(1), torn_sectors: 2, ..FaultPlan::default() };
        let dev = FaultyDevice::new(inner, plan);
        dev.write_at(&[1u8; 4096], 0).unwrap();
        dev.write_at(&[2u8; 4096], 4096).unwrap();
        dev.write_at(&[3u8; 4096], 8192).unwrap();
        dev.flush().unwrap();
        let mut back = vec![0u8; 3 * 4096];
        dev.read_at(&mut back, 0).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 1));
        assert!(back[4096..8192].iter().all(|&b| b == 2), "reads see the volatile write");
        assert!(back[8192..].iter().all(|&b| b == 3));
        let img = dev.persisted_image().unwrap();
        assert!(img[..4096].iter().all(|&b| b == 1));
        assert!(img[4096..5120].iter().all(|&b| b == 2), "two sectors of the torn write landed");
        assert!(img[5120..8192].iter().all(|&b| b == 0));
        assert!(img[8192..12288].iter().all(|&b| b == 0), "writes after the cut are dropped");
        assert_eq!(dev.writes(), 3);
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn chosen_ranges_fail_with_eio() {
        let plan = FaultPlan {
            fail_reads: vec![4096..8192],
            fail_writes: vec![10_000..10_001],
            ..FaultPlan::default()
        };
        let dev = FaultyDevice::new(Arc::new(MemDevice::new(1 << 16, "mem")), plan);
        let mut buf = [0u8; 512];
        dev.read_at(&mut buf, 0).unwrap();
        let e = dev.read_at(&mut buf, 8000).unwrap_err();
        assert!(e.to_string().contains("injected EIO on read of 512 bytes at 8000"), "{e}");
        let e = dev.write_at(&buf, 9600).unwrap_err();
        assert!(e.to_string().contains("injected EIO on write of 512 bytes at 9600"), "{e}");
        dev.write_at(&buf, 10_001).unwrap();
        dev.set_plan(FaultPlan::default());
        dev.read_at(&mut buf, 8000).unwrap();
    }
}
