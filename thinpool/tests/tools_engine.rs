//! The checker as an oracle for the engine: random sequences of pool operations, committed,
//! must give metadata our checker finds exactly right (hints included), that Debian's
//! thin_check accepts, and whose dump equals Debian's thin_dump and the engine's own view.

mod support;

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use support::{thin_check_ok, thin_dump};
use thinpool::check::check;
use thinpool::io::FileDevice;
use thinpool::pool::Pool;
use thinpool::units::{Sectors, ThinId};
use thinpool::xml::read_metadata;

const BS: u64 = 64 << 10;

fn run_ops(seed: u64, ops: usize) {
    let dir = tempfile::tempdir().unwrap();
    let meta_path = dir.path().join("metadata");
    let meta = Arc::new(FileDevice::create(&meta_path, 4 << 20).unwrap());
    let data = Arc::new(FileDevice::create(&dir.path().join("data"), 2048 * BS).unwrap());
    let pool = Pool::format(meta.clone(), data, Sectors(128)).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut live: Vec<u64> = Vec::new();
    let mut next_id = 0u64;
    let buf: Vec<u8> = (0..BS as usize * 4).map(|i| (i % 251) as u8 ^ seed as u8).collect();
    for _ in 0..ops {
        match rng.gen_range(0..10) {
            0 | 1 if live.len() < 6 => {
                pool.create_thin(ThinId(next_id)).unwrap();
                live.push(next_id);
                next_id += 1;
            }
            2 if !live.is_empty() => {
                let origin = live[rng.gen_range(0..live.len())];
                pool.create_snap(ThinId(next_id), ThinId(origin)).unwrap();
                live.push(next_id);
                next_id += 1;
            }
            3 if live.len() > 1 => {
                let id = live.swap_remove(rng.gen_range(0..live.len()));
                pool.delete(ThinId(id)).unwrap();
            }
            4 if !live.is_empty() => {
                let id = live[rng.gen_range(0..live.len())];
                let at = rng.gen_range(0..400) * BS;
                pool.discard(ThinId(id), at, rng.gen_range(1..20) * BS).unwrap();
            }
            5 => pool.commit().unwrap(),
            _ if !live.is_empty() => {
                let id = live[rng.gen_range(0..live.len())];
                let at = rng.gen_range(0..400 * BS);
                let len = rng.gen_range(1..buf.len());
                // Stop writing once the data device is nearly full; the test is about metadata.
                if pool.data_usage().free.0 > 64 {
                    pool.write(ThinId(id), at, &buf[..len]).unwrap();
                }
            }
            _ => {}
        }
    }
    pool.commit().unwrap();

    let r = check(meta.as_ref());
    assert!(r.is_clean(), "seed {seed}: {:#?}", r.damages);
    assert!(thin_check_ok(&meta_path), "seed {seed}: thin_check rejects engine metadata");
    let md = read_metadata(meta.as_ref()).unwrap();
    assert_eq!(thinpool::xml::render(&md), thin_dump(&meta_path), "seed {seed}");
    assert_eq!(md.devices.len(), live.len());
    for d in &md.devices {
        let engine: Vec<_> =
            pool.mappings(d.dev_id).unwrap().map(|(vb, bt)| (vb, bt.block, bt.time)).collect();
        assert_eq!(engine, d.blocks().collect::<Vec<_>>(), "seed {seed} device {}", d.dev_id);
        assert_eq!(d.mapped_blocks, d.nr_mappings(), "seed {seed} device {}", d.dev_id);
    }
}

#[test]
fn random_engine_histories_check_clean() {
    for seed in 1..=10 {
        run_ops(seed, 200);
    }
}
