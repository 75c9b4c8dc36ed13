//! Abusive traffic from python3-libnbd (tests/support/abuse.py) while a second client keeps
//! reading and writing: the abuser gets correct errors or a clean disconnect, and the second
//! client is served throughout and afterwards.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::client::Client;
use support::nbd::*;
use thinpool::export::mem::{MemCatalog, MemExport};
use thinpool::nbd::ServerOptions;

#[test]
fn abusive_client_does_not_disturb_a_second_client() {
    let cat = Arc::new(MemCatalog::new());
    cat.insert("vol", "", Arc::new(MemExport::new(64 << 20)));
    cat.insert("shared", "", Arc::new(MemExport::new(16 << 20)));
    let srv = start(cat, ServerOptions::default());
    let stop = Arc::new(AtomicBool::new(false));
    let addr = srv.addr;
    let stop2 = stop.clone();
    let steady = std::thread::spawn(move || {
        let mut c = Client::connect(addr, "shared", true, false);
        let mut rounds = 0u64;
        while !stop2.load(Ordering::SeqCst) {
            let off = (rounds % 256) * 65536;
            let data = random_bytes(65536, rounds + 1);
            assert_eq!(c.write(off, &data, 0), 0, "steady write failed");
            assert_eq!(c.read(off, 65536).expect("steady read"), data, "steady read-back");
            rounds += 1;
        }
        (c, rounds)
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/abuse.py");
    // The distribution's python carries the libnbd module (a pyenv python3 would not).
    let out = run("/usr/bin/python3", &[script, &srv.uri("vol")], Duration::from_secs(120));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "abuse.py failed:\n{text}");
    for what in [
        "read beyond EOF",
        "33 MiB read",
        "connection survives errors",
        "10,000 options",
        "unknown export refused",
        "exiting with requests in flight",
    ] {
        assert!(text.contains(&format!("OK {what}")), "missing check {what:?}:\n{text}");
    }
    stop.store(true, Ordering::SeqCst);
    let (mut c, rounds) = steady.join().expect("steady client panicked");
    assert!(rounds > 0, "the steady client made progress during the abuse");
    // And it is still served afterwards.
    assert_eq!(c.write(0, b"after", 0), 0);
    assert_eq!(c.read(0, 5).unwrap(), b"after");
    c.disconnect();
}
