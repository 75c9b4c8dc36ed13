//! The whole transmission path: fuzz bytes are what a kernel-style peer sends on a socketpair
//! to `serve_connected` over a small memory export. The server must answer or disconnect,
//! never panic or hang.
#![no_main]

use std::os::unix::net::UnixStream;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use thinpool::export::mem::MemExport;

mod peer;

/// Threads of this process that have not fully exited (Linux lists a thread in
/// /proc/self/task until it has).
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

fuzz_target!(|data: &[u8]| {
    let before = threads();
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let export = Arc::new(MemExport::new(1 << 20));
    let server =
        std::thread::spawn(move || thinpool::nbd::serve_connected(theirs, export, false, 2));
    let drain = peer::send_all(&ours, data);
    server.join().expect("server thread panicked");
    drain.join().expect("drain thread panicked");
    // The connection's workers are scoped threads: std::thread::scope returns when their
    // closures are done, but each frees its handle, its result slot and glibc's record of its
    // TLS destructors only on its way out. LeakSanitizer checks after each input and reported
    // those (48 + 32 + 11 bytes for one worker), so wait until every thread has exited.
    let t0 = std::time::Instant::now();
    while threads() > before {
        assert!(t0.elapsed() < std::time::Duration::from_secs(30), "a server thread never exited");
        std::thread::yield_now();
    }
});
