//! Crash safety of the group metadata: every change is cut short at each of its writes (the
//! cut write torn in half), then the group is reopened from what reached the devices. The
//! reopened group must be exactly the old layout or exactly the new one, and data already in
//! the regions must be intact.

use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use thinpool::io::{BlockDevice, FaultPlan, FaultyDevice, MemDevice, Power};
use thinpool::vg::format::DATA_START;
use thinpool::vg::{signature, Extents, GroupMeta, PoolConfig, VolumeGroup};

/// Passes writes through until the shared budget runs out; the write that exhausts it lands
/// only in part and every later write or flush fails, as if the machine had lost power.
struct CrashDevice {
    inner: Arc<MemDevice>,
    budget: Arc<AtomicI64>,
}

impl BlockDevice for CrashDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let left = self.budget.fetch_sub(1, Ordering::SeqCst);
        if left > 0 {
            return self.inner.write_at(buf, offset);
        }
        if left == 0 {
            // Only the first 48 bytes land: a header without its body, a label cut short.
            self.inner.write_at(&buf[..buf.len().min(48)], offset)?;
        }
        Err(io::Error::other("power lost"))
    }
    fn flush(&self) -> io::Result<()> {
        if self.budget.load(Ordering::SeqCst) < 0 {
            return Err(io::Error::other("power lost"));
        }
        Ok(())
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn grow(&self, new_size: u64) -> io::Result<()> {
        self.inner.grow(new_size)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

const EXT: u64 = 64 << 10;

/// Two devices of 128 extents of 64 KiB (plus the 4 MiB metadata area each) and a third,
/// unlabelled one for extends.
struct Rig {
    mems: Vec<Arc<MemDevice>>,
    budget: Arc<AtomicI64>,
}

impl Rig {
    fn new() -> Self {
        let mems = (0..3)
            .map(|i| Arc::new(MemDevice::new(DATA_START + 128 * EXT, &format!("m{i}"))))
            .collect();
        Self { mems, budget: Arc::new(AtomicI64::new(i64::MAX)) }
    }

    fn dev(&self, i: usize) -> Arc<dyn BlockDevice> {
        Arc::new(CrashDevice { inner: self.mems[i].clone(), budget: self.budget.clone() })
    }

    fn raw(&self, i: usize) -> Arc<dyn BlockDevice> {
        self.mems[i].clone()
    }
}

/// The layout without uuids (which differ between runs).
fn shape(m: &GroupMeta) -> String {
    let exts: Vec<u64> = m.devices.iter().map(|d| d.extents.0).collect();
    format!("{exts:?} {:?} {:?}", m.tmeta, m.tdata)
}

const PATTERN_AT: [u64; 3] = [0, 300 * 4096 + 17, 5 * EXT - 3];

/// A group over `devs` with a pattern in both regions (see [`assert_data_intact`]).
fn create_group(devs: Vec<Arc<dyn BlockDevice>>) -> VolumeGroup {
    let config = PoolConfig::from_opts(["dm.thinp_percent=60", "dm.thinp_metapercent=15"]).unwrap();
    let vg = VolumeGroup::create_sized(devs, config, false, EXT).unwrap();
    for (i, &at) in PATTERN_AT.iter().enumerate() {
        vg.data_region().write_at(&[i as u8 + 1; 100], at).unwrap();
        vg.metadata_region().write_at(&[i as u8 + 9; 100], at).unwrap();
    }
    vg
}

fn setup(rig: &Rig) -> VolumeGroup {
    create_group(vec![rig.dev(0), rig.dev(1)])
}

/// Whether the device carries a label that decodes: how `open_dir` finds a group's devices.
fn labelled(d: &Arc<dyn BlockDevice>) -> bool {
    let mut b = vec![0u8; 4096];
    d.read_at(&mut b, 0).unwrap();
    signature::detect(&b) == Some(signature::Signature::Lamina)
}

/// The layouts before and after a change, and which of them the cut runs reopened.
struct Layouts {
    old: String,
    new: String,
    saw: (bool, bool),
}

impl Layouts {
    fn new(old: String, new: String) -> Self {
        Self { old, new, saw: (false, false) }
    }

    /// Checks a group reopened after the cut `at`: exactly one of the layouts, data intact.
    /// Returns whether it is the old one.
    fn reopened(&mut self, vg: &VolumeGroup, at: &str) -> bool {
        let (old, new) = (&self.old, &self.new);
        let got = shape(&vg.metadata());
        assert!(got == *old || got == *new, "{at}: neither layout:\n{got}\nold {old}\nnew {new}");
        self.saw.0 |= got == *old;
        self.saw.1 |= got == *new;
        assert_data_intact(vg);
        got == *old
    }

    fn assert_saw_both(&self, name: &str) {
        assert!(self.saw.0 && self.saw.1, "{name}: cuts produced both layouts ({:?})", self.saw);
    }
}

fn assert_data_intact(vg: &VolumeGroup) {
    for (i, &at) in PATTERN_AT.iter().enumerate() {
        let mut b = [0u8; 100];
        vg.data_region().read_at(&mut b, at).unwrap();
        assert_eq!(b, [i as u8 + 1; 100], "data at {at}");
        vg.metadata_region().read_at(&mut b, at).unwrap();
        assert_eq!(b, [i as u8 + 9; 100], "metadata at {at}");
    }
}

type Change = fn(&VolumeGroup, &Rig) -> thinpool::vg::Result<()>;

fn crash_everywhere(name: &str, pre: Option<Change>, change: Change, extends: bool) {
    // A clean run tells the old and new layouts and how many writes the change makes.
    let rig = Rig::new();
    let vg = setup(&rig);
    if let Some(pre) = pre {
        pre(&vg, &rig).unwrap();
    }
    let old = shape(&vg.metadata());
    let before = rig.budget.load(Ordering::SeqCst);
    change(&vg, &rig).unwrap();
    let writes = before - rig.budget.load(Ordering::SeqCst);
    let new = shape(&vg.metadata());
    assert_ne!(old, new, "{name} changes the layout");
    assert!(writes >= 2, "{name}: {writes} writes");

    let mut layouts = Layouts::new(old, new.clone());
    for cut in 0..=writes {
        let rig = Rig::new();
        let vg = setup(&rig);
        if let Some(pre) = pre {
            pre(&vg, &rig).unwrap();
        }
        rig.budget.store(cut, Ordering::SeqCst);
        let res = change(&vg, &rig);
        assert_eq!(res.is_ok(), cut >= writes, "{name} cut at write {cut}: {res:?}");
        drop(vg);

        let all: Vec<_> = (0..if extends { 3 } else { 2 }).map(|i| rig.raw(i)).collect();
        let reopened = if extends {
            // Devices are found the way `open_dir` finds them: by a label that decodes. The
            // old devices alone must also still open unless the extend got through to them.
            let labelled: Vec<_> = all.iter().filter(|d| labelled(d)).cloned().collect();
            let old_only = VolumeGroup::open_with(vec![rig.raw(0), rig.raw(1)]);
            if let Ok(vg) = &old_only {
                assert_data_intact(vg);
            }
            VolumeGroup::open_with(labelled).unwrap()
        } else {
            VolumeGroup::open_with(all).unwrap()
        };
        // The group keeps working: redo the change if it was lost, and reopen once more.
        if layouts.reopened(&reopened, &format!("{name} cut at {cut}")) {
            rig.budget.store(i64::MAX, Ordering::SeqCst);
            change(&reopened, &rig).unwrap();
        }
        let again =
            VolumeGroup::open_with((0..if extends { 3 } else { 2 }).map(|i| rig.raw(i)).collect())
                .unwrap();
        assert_eq!(shape(&again.metadata()), new, "{name} cut at {cut}: after redo");
        assert_data_intact(&again);
    }
    layouts.assert_saw_both(name);
}

#[test]
fn crash_during_grow_data() {
    crash_everywhere("grow_data", None, |vg, _| vg.grow_data(Extents(20)), false);
}

#[test]
fn crash_during_grow_metadata() {
    crash_everywhere("grow_metadata", None, |vg, _| vg.grow_metadata(Extents(3)), false);
}

#[test]
fn crash_during_extend() {
    crash_everywhere("extend", None, |vg, rig| vg.extend_with(rig.dev(2), false), true);
}

#[test]
fn crash_during_grow_across_devices() {
    // Extend (uncut), then cut the grow that takes the first device's last free extents and
    // continues on the new one.
    crash_everywhere(
        "grow across devices",
        Some(|vg, rig| vg.extend_with(rig.dev(2), false)),
        |vg, _| vg.grow_data(Extents(100)),
        true,
    );
}

/// The same cuts with the engine's FaultyDevice on one shared power supply: after the cut the
/// devices keep accepting writes into a volatile cache (the code under test carries on), and
/// only what was persisted is reopened. `torn` whole sectors of the cut write land.
fn power_cut_everywhere(
    name: &str,
    change: fn(&VolumeGroup, &[Arc<FaultyDevice>]) -> thinpool::vg::Result<()>,
    torn: u64,
) {
    let rig = || {
        let power = Arc::new(Power::default());
        let devs: Vec<Arc<FaultyDevice>> = (0..3)
            .map(|i| {
                let mem = Arc::new(MemDevice::new(DATA_START + 128 * EXT, &format!("m{i}")));
                Arc::new(FaultyDevice::on_power(mem, FaultPlan::default(), power.clone()))
            })
            .collect();
        let vg = create_group(vec![devs[0].clone(), devs[1].clone()]);
        (devs, vg)
    };
    let (devs, vg) = rig();
    let old = shape(&vg.metadata());
    let before = devs[0].writes();
    change(&vg, &devs).unwrap();
    let writes = devs[0].writes() - before;
    let new = shape(&vg.metadata());

    let mut layouts = Layouts::new(old, new);
    for cut in 0..=writes {
        let (devs, vg) = rig();
        devs[0].power().cut_at(devs[0].writes() + cut, torn);
        change(&vg, &devs).unwrap();
        drop(vg);
        let persisted: Vec<Arc<dyn BlockDevice>> = devs
            .iter()
            .map(|d| {
                let mem = MemDevice::new(d.size(), &d.describe());
                mem.write_at(&d.persisted_image().unwrap(), 0).unwrap();
                Arc::new(mem) as Arc<dyn BlockDevice>
            })
            .filter(labelled)
            .collect();
        let vg = VolumeGroup::open_with(persisted)
            .unwrap_or_else(|e| panic!("{name} cut at {cut}: {e}"));
        layouts.reopened(&vg, &format!("{name} cut at {cut} (torn {torn})"));
    }
    layouts.assert_saw_both(name);
}

#[test]
fn power_cuts_on_a_shared_supply() {
    for torn in [0, 1] {
        power_cut_everywhere("grow_data", |vg, _| vg.grow_data(Extents(20)), torn);
        power_cut_everywhere("grow_metadata", |vg, _| vg.grow_metadata(Extents(3)), torn);
        power_cut_everywhere("extend", |vg, d| vg.extend_with(d[2].clone(), false), torn);
    }
}
