//! The `lamina:changed:SNAP` / `qemu:dirty-bitmap:SNAP` metadata contexts over a real pool:
//! Debian's nbdinfo (libnbd 1.14) maps exactly the blocks written or discarded since the
//! snapshot, and one BLOCK_STATUS answers several selected contexts.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::client::{hello, option, Client, Stream};
use support::nbd::*;
use thinpool::export::pool::PoolCatalog;
use thinpool::nbd::proto::msg::{Chunk, HeaderMode};
use thinpool::nbd::proto::opt::*;
use thinpool::nbd::proto::wire::*;
use thinpool::nbd::ServerOptions;
use thinpool::pool::FilePool;
use thinpool::service::{PoolSource, Service, ServiceOptions};
use thinpool::units::{Bytes, Sectors};

const T: Duration = Duration::from_secs(60);
const BLOCK: u64 = 64 << 10;

/// A served pool: `vol` (4 MiB, its first 2 MiB written) and `s1`, a snapshot of it.
fn served_pool() -> (tempfile::TempDir, Running) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let pool = FilePool::create(&dir, Bytes::new(512 * BLOCK), None, Sectors(128)).unwrap();
    let vol = pool.create_volume("vol", Bytes::new(64 * BLOCK)).unwrap();
    pool.write(vol, 0, &random_bytes((32 * BLOCK) as usize, 1)).unwrap();
    pool.snapshot_volume("vol", "s1").unwrap();
    pool.commit().unwrap();
    drop(pool);
    let svc = Service::open(&PoolSource::Dir(dir), ServiceOptions::default()).unwrap();
    let running = start(Arc::new(PoolCatalog::new(Arc::new(svc))), ServerOptions::default());
    (tmp, running)
}

/// `nbdinfo --map=CONTEXT` as (offset, length, flags) rows.
fn map(uri: &str, context: &str) -> Vec<(u64, u64, u32)> {
    let out = ok("nbdinfo", &[&format!("--map={context}"), uri], T);
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect()
}

#[test]
fn nbdinfo_maps_exactly_the_blocks_changed_since_the_snapshot() {
    let (_tmp, srv) = served_pool();
    let mut c = Client::connect_unix(&srv.sock, "vol", true, false);
    // Inside one block, across two, a discard of a block the snapshot maps, and a block
    // past what the snapshot maps.
    assert_eq!(c.write(3 * BLOCK + 100, &[7; 100], 0), 0);
    assert_eq!(c.write(10 * BLOCK + 1, &vec![8; BLOCK as usize], 0), 0);
    assert_eq!(c.cmd(CMD_TRIM, 0, 20 * BLOCK, BLOCK).error, 0);
    assert_eq!(c.write(40 * BLOCK, &[9; 4096], 0), 0);
    c.disconnect();
    let want = vec![
        (0, 3 * BLOCK, 0),
        (3 * BLOCK, BLOCK, 1),
        (4 * BLOCK, 6 * BLOCK, 0),
        (10 * BLOCK, 2 * BLOCK, 1),
        (12 * BLOCK, 8 * BLOCK, 0),
        (20 * BLOCK, BLOCK, 1),
        (21 * BLOCK, 19 * BLOCK, 0),
        (40 * BLOCK, BLOCK, 1),
        (41 * BLOCK, 23 * BLOCK, 0),
    ];
    let uri = srv.unix_uri("vol");
    assert_eq!(map(&uri, "lamina:changed:s1"), want);
    assert_eq!(map(&uri, "qemu:dirty-bitmap:s1"), want);
    // The snapshot compared with itself is unchanged everywhere; with the volume, the same
    // blocks differ.
    assert_eq!(map(&srv.unix_uri("s1"), "lamina:changed:vol"), want);
    let dirty = ok("nbdinfo", &["--map=qemu:dirty-bitmap:s1", &uri], T);
    assert!(dirty.lines().nth(1).unwrap().ends_with("dirty"), "{dirty}");
    let info = ok("nbdinfo", &["--json", &uri], T);
    for ctx in ["base:allocation", "lamina:changed:s1", "qemu:dirty-bitmap:s1"] {
        assert!(info.contains(&format!("\"{ctx}\"")), "{ctx} not listed: {info}");
    }
    assert!(!info.contains("lamina:changed:vol"), "a volume is no base of itself: {info}");
    // A context naming no volume is not offered: nbdinfo says so and fails.
    let out = run("nbdinfo", &["--map=lamina:changed:nope", &uri], T);
    assert!(!out.status.success());
}

#[test]
fn one_block_status_answers_every_selected_context() {
    let (_tmp, srv) = served_pool();
    let mut s = hello(srv.addr);
    assert_eq!(option(&mut s, &ClientOption::StructuredReply), [OptionReply::Ack]);
    let q = MetaQuery {
        export: "vol".into(),
        queries: vec![
            "lamina:changed:s1".into(),
            "lamina:changed:nope".into(),
            "base:allocation".into(),
            "qemu:dirty-bitmap:s1".into(),
        ],
    };
    let r = option(&mut s, &ClientOption::SetMetaContext(q.clone()));
    let ids: Vec<(u32, &str)> = r
        .iter()
        .filter_map(|x| match x {
            OptionReply::MetaContext { id, name } => Some((*id, name.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        ids,
        [(2, "lamina:changed:s1"), (1, "base:allocation"), (3, "qemu:dirty-bitmap:s1")]
    );
    assert_eq!(r.last(), Some(&OptionReply::Ack));
    // LIST with a namespace query lists that namespace only.
    let lq = MetaQuery { export: "vol".into(), queries: vec!["qemu:".into()] };
    let listed: Vec<String> = option(&mut s, &ClientOption::ListMetaContext(lq))
        .into_iter()
        .filter_map(|x| match x {
            OptionReply::MetaContext { name, .. } => Some(name),
            _ => None,
        })
        .collect();
    assert_eq!(listed, ["qemu:dirty-bitmap:s1"]);
    let r = option(&mut s, &ClientOption::Go(ExportQuery { name: "vol".into(), info: vec![] }));
    assert_eq!(r.last(), Some(&OptionReply::Ack));
    let mut c = Client::after_handshake(Stream::Tcp(s), HeaderMode::Compact, 64 * BLOCK, 0);
    assert_eq!(c.write(33 * BLOCK, &[1; 10], 0), 0);
    let r = c.cmd(CMD_BLOCK_STATUS, 0, 32 * BLOCK, 2 * BLOCK);
    assert_eq!(r.error, 0);
    let got: Vec<(u32, Vec<(u32, u32)>)> = r
        .chunks
        .iter()
        .map(|ch| match ch {
            Chunk::BlockStatus { context, extents } => (*context, extents.clone()),
            other => panic!("unexpected chunk {other:?}"),
        })
        .collect();
    let b = BLOCK as u32;
    assert_eq!(
        got,
        vec![(2, vec![(b, 0), (b, 1)]), (1, vec![(b, 3), (b, 0)]), (3, vec![(b, 0), (b, 1)]),]
    );
    c.disconnect();
}

/// QEMU's own NBD client reads the bitmap the way backup scripts drive it: `qemu-img map`
/// with `x-dirty-bitmap` reports dirty ranges as `"data": false` (qemu docs/interop/nbd.rst,
/// block/nbd.c's x-dirty-bitmap option).
#[test]
fn qemu_img_reads_the_dirty_bitmap() {
    let (_tmp, srv) = served_pool();
    let mut c = Client::connect_unix(&srv.sock, "vol", true, false);
    assert_eq!(c.write(2 * BLOCK, &[1; 4096], 0), 0);
    assert_eq!(c.write(33 * BLOCK, &vec![2; BLOCK as usize], 0), 0);
    c.disconnect();
    let opts = format!(
        "driver=nbd,server.type=unix,server.path={},export=vol,\
         x-dirty-bitmap=qemu:dirty-bitmap:s1",
        srv.sock.display()
    );
    let out = ok("qemu-img", &["map", "--output=json", "--image-opts", &opts], T);
    let map: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let dirty: Vec<(u64, u64)> = map
        .iter()
        .filter(|e| e["data"] == false)
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(dirty, [(2 * BLOCK, BLOCK), (33 * BLOCK, BLOCK)], "{out}");
}
