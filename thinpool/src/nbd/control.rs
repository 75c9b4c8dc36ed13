//! The daemon's control socket: `DIR/control.sock`, one JSON object per line each way.
//!
//! While `thinpool serve` holds the pool lock no other process may open the pool for writing,
//! so management verbs (create, snapshot, remove, list, status) are sent here and executed by
//! the daemon itself.
//!
//! ```text
//! → {"op":"create","name":"vol1","size":10737418240}
//! ← {"ok":true,"data":{"thin_id":1}}
//! → {"op":"remove","name":"nope"}
//! ← {"ok":false,"error":"not found: volume nope"}
//! ```
//!
//! The socket is created mode 0600 (root's tool talks to root's daemon). Lines are capped at
//! [`MAX_LINE`] bytes and idle clients are dropped after [`IDLE`].

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest request or response line.
pub const MAX_LINE: u64 = 1 << 20;
/// A control client that sends nothing for this long is dropped.
pub const IDLE: Duration = Duration::from_secs(30);

/// A management verb.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Create {
        name: String,
        size: u64,
    },
    Snapshot {
        origin: String,
        name: String,
    },
    Remove {
        name: String,
    },
    List,
    Status,
    /// vgextend: add a device to a device-backed pool's volume group.
    Extend {
        device: String,
    },
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

/// Executes requests inside the daemon.
pub trait Handler: Send + Sync {
    fn handle(&self, req: Request) -> Result<serde_json::Value, String>;
}

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("cannot connect to the pool daemon at {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("talking to the pool daemon at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("bad answer from the pool daemon at {path}: {why}")]
    Protocol { path: PathBuf, why: String },
}

pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("control.sock")
}

/// Sends one request to the daemon serving the pool in `dir` and waits for its answer.
pub fn request(dir: &Path, req: &Request) -> Result<Response, ControlError> {
    let path = socket_path(dir);
    let io_err = |source| ControlError::Io { path: path.clone(), source };
    let mut s = UnixStream::connect(&path)
        .map_err(|source| ControlError::Connect { path: path.clone(), source })?;
    s.set_read_timeout(Some(Duration::from_secs(300))).map_err(io_err)?;
    let mut line = serde_json::to_vec(req)
        .map_err(|e| ControlError::Protocol { path: path.clone(), why: e.to_string() })?;
    line.push(b'\n');
    s.write_all(&line).map_err(io_err)?;
    let mut answer = String::new();
    BufReader::new((&s).take(MAX_LINE)).read_line(&mut answer).map_err(io_err)?;
    if answer.is_empty() {
        return Err(ControlError::Protocol { path, why: "connection closed".into() });
    }
    serde_json::from_str(&answer)
        .map_err(|e| ControlError::Protocol { path: path.clone(), why: e.to_string() })
}

/// Serves the control socket at `path` until `stop` is set.
pub fn serve(
    path: &Path,
    handler: Arc<dyn Handler>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    // The socket appears under its name only once it listens, with its final mode: bind
    // creates the file before listen, and a client (init waiting for the daemon) that sees
    // the file would otherwise get ECONNREFUSED.
    let tmp = path.with_extension("sock.tmp");
    for p in [path, tmp.as_path()] {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let listener = UnixListener::bind(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    listener.set_nonblocking(true)?;
    let path = path.to_owned();
    std::thread::Builder::new().name("control".into()).spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((s, _)) => {
                    let h = handler.clone();
                    let _ = std::thread::Builder::new()
                        .name("control-conn".into())
                        .spawn(move || serve_client(s, h.as_ref()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    tracing::warn!("control: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    })
}

fn serve_client(s: UnixStream, handler: &dyn Handler) {
    if s.set_nonblocking(false).is_err() || s.set_read_timeout(Some(IDLE)).is_err() {
        return;
    }
    let mut reader = BufReader::new(&s);
    loop {
        let mut line = String::new();
        match (&mut reader).take(MAX_LINE).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with('\n') {
            // Over-long line: answer once and drop the client.
            let _ = reply(&s, &failure("request line too long".into()));
            return;
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => match handler.handle(req) {
                Ok(data) => Response { ok: true, error: None, data },
                Err(e) => failure(e),
            },
            Err(e) => failure(format!("bad request: {e}")),
        };
        if reply(&s, &resp).is_err() {
            return;
        }
    }
}

fn failure(error: String) -> Response {
    Response { ok: false, error: Some(error), data: serde_json::Value::Null }
}

fn reply(mut s: &UnixStream, r: &Response) -> io::Result<()> {
    let mut out = serde_json::to_vec(r).map_err(io::Error::other)?;
    out.push(b'\n');
    s.write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Names(Mutex<Vec<String>>);

    impl Handler for Names {
        fn handle(&self, req: Request) -> Result<serde_json::Value, String> {
            let mut v = self.0.lock().unwrap();
            match req {
                Request::Create { name, .. } => {
                    if v.contains(&name) {
                        return Err(format!("exists: {name}"));
                    }
                    v.push(name);
                    Ok(serde_json::json!({}))
                }
                Request::List => Ok(serde_json::json!(*v)),
                _ => Err("unsupported".into()),
            }
        }
    }

    #[test]
    fn rt_control_messages() {
        let r = Request::Snapshot { origin: "a".into(), name: "b".into() };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"op":"snapshot","origin":"a","name":"b"}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let ok = Response { ok: true, error: None, data: serde_json::json!([1]) };
        assert_eq!(
            serde_json::from_str::<Response>(&serde_json::to_string(&ok).unwrap()).unwrap(),
            ok
        );
    }

    #[test]
    fn control_socket_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let h = serve(&socket_path(dir.path()), Arc::new(Names(Mutex::new(vec![]))), stop.clone())
            .unwrap();
        let mode = std::fs::metadata(socket_path(dir.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let create = Request::Create { name: "v".into(), size: 1 };
        assert!(request(dir.path(), &create).unwrap().ok);
        let again = request(dir.path(), &create).unwrap();
        assert!(!again.ok);
        assert_eq!(again.error.as_deref(), Some("exists: v"));
        assert_eq!(request(dir.path(), &Request::List).unwrap().data, serde_json::json!(["v"]));
        // Garbage gets an error answer, not a hang.
        let mut s = UnixStream::connect(socket_path(dir.path())).unwrap();
        s.write_all(b"{nonsense}\n").unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        assert!(line.contains("bad request"), "{line}");
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
        assert!(matches!(request(dir.path(), &Request::List), Err(ControlError::Connect { .. })));
    }
}
