//! Helpers for the service tests: small groups and file pools on sparse files, block
//! patterns, thin_check of a metadata device, extension events.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use thinpool::io::Payload;
use thinpool::io::{BlockDevice, FileDevice};
use thinpool::pool::Mode;
use thinpool::service::{Service, ServiceOptions, VolumeHandle};
use thinpool::units::Bytes;
use thinpool::vg::format::DATA_START;
use thinpool::vg::{EventLog, PoolConfig, VgPool, VolumeGroup};

/// Extent size = pool block size, so tests count blocks and extents alike.
pub const EXT: u64 = 64 << 10;

pub fn sparse(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

/// A device file holding `extents` extents after the group's metadata area.
pub fn device(dir: &Path, name: &str, extents: u64) -> PathBuf {
    sparse(dir, name, DATA_START + extents * EXT)
}

/// A service over a one-device group of `extents` 64 KiB extents, events in `dir/events`.
pub fn group_service(dir: &Path, extents: u64, opts: &[&str]) -> Service {
    let p = device(dir, "dev0", extents);
    let config = PoolConfig::from_opts(opts.iter().copied()).unwrap();
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&p).unwrap());
    let vg = VolumeGroup::create_sized(vec![dev], config, false, EXT).unwrap();
    let pool = VgPool::over(vg).unwrap().with_event_log(EventLog::new(&dir.join("events")));
    let opts = ServiceOptions { state_dir: Some(dir.to_owned()), ..Default::default() };
    Service::from_vg_pool(pool, opts).unwrap()
}

/// Block `i` of a test volume: every byte says which block and which generation it is.
pub fn pattern(i: u64, gen: u8) -> Vec<u8> {
    let mut b = vec![gen; EXT as usize];
    b[..8].copy_from_slice(&i.to_le_bytes());
    b
}

/// Creates a 1 GiB volume `name` and opens it.
pub fn open_new(svc: &Service, name: &str) -> VolumeHandle {
    svc.create_volume(name, Bytes::new(1 << 30)).unwrap();
    svc.open_volume(name).unwrap()
}

/// Writes `pattern(i, gen)` to each block `i` of `blocks`; every write must succeed.
pub fn write_blocks(h: &VolumeHandle, blocks: std::ops::Range<u64>, gen: u8) {
    for i in blocks {
        h.write(i * EXT, &Payload::mem(&pattern(i, gen)), Mode::Full).unwrap();
    }
}

/// Copies a metadata device to a file and runs Debian's thin_check on it.
pub fn thin_check_device(dev: &dyn BlockDevice, dir: &Path, extra: &[&str]) -> String {
    let copy = dir.join("tmeta.copy");
    let mut bytes = vec![0u8; dev.size() as usize];
    dev.read_at(&mut bytes, 0).unwrap();
    std::fs::write(&copy, &bytes).unwrap();
    super::thin_check_file(&copy, extra)
}

pub fn events(dir: &Path) -> Vec<thinpool::vg::ExtendEvent> {
    EventLog::new(&dir.join("events")).read().unwrap()
}
