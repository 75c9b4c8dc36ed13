//! A fake peer for the socket clients' unit tests (QMP, guest agent): the real client
//! connects to a Unix socket in a temporary directory and a thread plays the other side.

use std::io::{BufRead, BufReader};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::thread::JoinHandle;

use serde_json::Value;

pub(crate) struct FakePeer {
    /// The socket to connect to.
    pub sock: PathBuf,
    _dir: tempfile::TempDir,
    thread: JoinHandle<()>,
}

impl FakePeer {
    /// Binds `name` and hands its first connection to `serve` (a line reader and a writer).
    pub fn spawn(
        name: &str,
        serve: impl FnOnce(BufReader<UnixStream>, UnixStream) + Send + 'static,
    ) -> FakePeer {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join(name);
        let l = UnixListener::bind(&sock).unwrap();
        let thread = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let w = s.try_clone().unwrap();
            serve(BufReader::new(s), w);
        });
        FakePeer { sock, _dir: dir, thread }
    }

    /// Waits for the peer, passing on its panics (a failed assertion or unwrap on its side).
    pub fn join(self) {
        self.thread.join().unwrap();
    }
}

/// The next JSON line the client sent; `None` once it has closed the connection.
pub(crate) fn next_request(r: &mut impl BufRead) -> Option<Value> {
    let mut line = String::new();
    match r.read_line(&mut line).unwrap() {
        0 => None,
        _ => Some(serde_json::from_str(&line).unwrap()),
    }
}
