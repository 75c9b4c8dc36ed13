//! The client side the socket targets share: send the fuzz bytes, then read whatever the
//! server answers until it closes its end.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

/// Writes `input` to the server and shuts this side's writing down. The answer is read on a
/// thread of its own (joined by the caller), so a server that writes back a lot never blocks
/// on a full socket while this side is still writing.
pub fn send_all(mut ours: &UnixStream, input: &[u8]) -> JoinHandle<()> {
    let mut rx = ours.try_clone().expect("clone");
    let drain = std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = rx.read_to_end(&mut sink);
    });
    let _ = ours.write_all(input);
    let _ = ours.shutdown(Shutdown::Write);
    drain
}
