//! Power cuts (the engine's FaultyDevice: a torn write, later writes lost) at every write of
//! pool creation and of a resize with volume changes, on a one-device group. After each cut
//! the persisted image must reopen as a consistent pool: names agree with the committed
//! transaction, committed data reads back, and the pool covers its whole data region.

use std::sync::Arc;
use thinpool::io::{BlockDevice, FaultPlan, FaultyDevice, MemDevice};
use thinpool::units::{Bytes, DataBlock};
use thinpool::vg::format::DATA_START;
use thinpool::vg::{Extents, PoolConfig, VgPool, VolumeGroup};

const EXT: u64 = 64 << 10;
const SIZE: u64 = DATA_START + 200 * EXT;

fn config() -> PoolConfig {
    PoolConfig::from_opts(["dm.thinp_percent=50", "dm.thinp_metapercent=20"]).unwrap()
}

fn faulty(image: Option<&[u8]>) -> Arc<FaultyDevice> {
    let mem = MemDevice::new(SIZE, "dev");
    if let Some(b) = image {
        mem.write_at(b, 0).unwrap();
    }
    Arc::new(FaultyDevice::new(Arc::new(mem), FaultPlan::default()))
}

fn reopen(image: &[u8]) -> VgPool {
    let mem: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(SIZE, "dev"));
    mem.write_at(image, 0).unwrap();
    VgPool::over(VolumeGroup::open_with(vec![mem]).unwrap()).unwrap()
}

/// Cuts the power `after` writes from now; one sector of the cut write lands.
fn cut_after(dev: &FaultyDevice, after: u64) {
    dev.power().cut_at(dev.writes() + after, 1);
}

#[test]
fn cut_during_create_then_create_again_works() {
    let clean = faulty(None);
    let dev: Arc<dyn BlockDevice> = clean.clone();
    VgPool::over(VolumeGroup::create_sized(vec![dev], config(), false, EXT).unwrap()).unwrap();
    let writes = clean.writes();
    assert!(writes > 5, "{writes}");
    for cut in 0..writes {
        let f = faulty(None);
        cut_after(&f, cut);
        let dev: Arc<dyn BlockDevice> = f.clone();
        let _ = VolumeGroup::create_sized(vec![dev], config(), false, EXT).and_then(VgPool::over);
        let image = f.persisted_image().unwrap();
        // Docker's restart: create with the same values again, over what persisted.
        let dev: Arc<dyn BlockDevice> = faulty(Some(&image));
        let p = VolumeGroup::create_sized(vec![dev], config(), false, EXT)
            .and_then(VgPool::over)
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let id = p.pool().create_volume("v", Bytes::new(1 << 20)).unwrap();
        p.pool().write(id, 0, b"alive").unwrap();
        p.pool().commit().unwrap();
        assert_eq!(p.pool().data_usage().total, DataBlock(100), "cut at {cut}");
    }
}

#[test]
fn cut_during_volume_changes_and_resize() {
    let setup = || {
        let f = faulty(None);
        let dev: Arc<dyn BlockDevice> = f.clone();
        let p = VgPool::over(VolumeGroup::create_sized(vec![dev], config(), false, EXT).unwrap())
            .unwrap();
        let id = p.pool().create_volume("base", Bytes::new(4 << 20)).unwrap();
        p.pool().write(id, 100_000, b"committed before the cut").unwrap();
        p.pool().commit().unwrap();
        (f, p)
    };
    let change = |p: &VgPool| -> Result<(), String> {
        let id = p.pool().create_volume("new", Bytes::new(4 << 20)).map_err(|e| e.to_string())?;
        p.pool().write(id, 0, b"new volume").map_err(|e| e.to_string())?;
        p.pool().commit().map_err(|e| e.to_string())?;
        p.resize_data(Extents(10)).map_err(|e| e.to_string())?;
        p.resize_metadata(Extents(2)).map_err(|e| e.to_string())
    };
    let (f, p) = setup();
    let before = f.writes();
    change(&p).unwrap();
    let writes = f.writes() - before;
    assert!(writes > 5, "{writes}");

    let mut outcomes = std::collections::BTreeSet::new();
    for cut in 0..=writes {
        let (f, p) = setup();
        cut_after(&f, cut);
        let _ = change(&p);
        drop(p);
        let p = reopen(&f.persisted_image().unwrap());
        let base = p.pool().volume("base").unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let mut b = [0u8; 24];
        p.pool().read(base.id, 100_000, &mut b).unwrap();
        assert_eq!(&b, b"committed before the cut", "cut at {cut}");
        if let Ok(v) = p.pool().volume("new") {
            let mut b = [0u8; 10];
            p.pool().read(v.id, 0, &mut b).unwrap();
            assert_eq!(&b, b"new volume", "cut at {cut}");
        }
        let total = p.pool().data_usage().total.0;
        assert_eq!(
            total,
            p.vg().data_region().size() / EXT,
            "cut at {cut}: pool covers its region"
        );
        assert!(total == 100 || total == 110, "cut at {cut}: {total}");
        outcomes.insert((p.pool().volume("new").is_ok(), total));
        // Still writable after recovery.
        p.pool().write(base.id, 0, b"x").unwrap();
        p.pool().commit().unwrap();
    }
    assert!(outcomes.contains(&(false, 100)) && outcomes.contains(&(true, 110)), "{outcomes:?}");
}
