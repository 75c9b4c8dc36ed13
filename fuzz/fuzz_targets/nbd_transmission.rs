//! The whole transmission path: fuzz bytes are what a kernel-style peer sends on a socketpair
//! to `serve_connected` over a small memory export. The server must answer or disconnect,
//! never panic or hang.
#![no_main]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use thinpool::export::mem::MemExport;

fuzz_target!(|data: &[u8]| {
    let (mut ours, theirs) = UnixStream::pair().expect("socketpair");
    let export = Arc::new(MemExport::new(1 << 20));
    let server =
        std::thread::spawn(move || thinpool::nbd::serve_connected(theirs, export, false, 2));
    let mut rx = ours.try_clone().expect("clone");
    let drain = std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = rx.read_to_end(&mut sink);
    });
    let _ = ours.write_all(data);
    let _ = ours.shutdown(Shutdown::Write);
    server.join().expect("server thread panicked");
    drain.join().expect("drain thread panicked");
});
