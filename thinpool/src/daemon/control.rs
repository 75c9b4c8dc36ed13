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

use crate::units::Bytes;

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
        /// Bytes (a JSON number on the wire).
        size: Bytes,
        /// Created for export: offered to NBD clients by a daemon serving `--exports
        /// flagged` (the appliance). Volumes the machine makes for itself leave it unset.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        export: bool,
        /// A LUKS2 volume: its header (cryptsetup's, see [`crate::luks`]) is read from the
        /// FIFO `luks_header` names and written at offset 0 before the create commits.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        encrypted: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        luks_header: Option<String>,
    },
    /// Marks a volume as created for export, or takes the mark away.
    Export {
        name: String,
        export: bool,
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
    /// dm-thin's reserve_metadata_snap / release_metadata_snap messages.
    MetadataSnap {
        action: MetadataSnapAction,
    },
    /// `thinpool send`: the daemon writes the stream into `path` (a FIFO the client reads).
    Send {
        snap: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        path: String,
    },
    /// `thinpool receive`: the daemon reads the stream from `path` (a FIFO the client fills).
    Receive {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base: Option<String>,
        path: String,
    },
    /// Serve a volume as a ublk block device of this machine (`/dev/ublkbN`).
    Attach {
        name: String,
    },
    /// Stop and delete a volume's ublk device. While it is open (e.g. mounted) this is
    /// refused, or with `deferred` done as soon as its last user closes it (Docker's
    /// deferred removal).
    Detach {
        name: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        deferred: bool,
    },
}

/// A volume served as a ublk block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachEntry {
    pub name: String,
    /// `/dev/ublkbN`.
    pub device: String,
    /// Still open, and detached as soon as its last user closes it (deferred removal).
    #[serde(default)]
    pub deferred_removal: bool,
}

/// What to do with the pool's metadata snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetadataSnapAction {
    Reserve,
    Release,
}

/// One volume as the daemon lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeEntry {
    pub name: String,
    pub thin_id: u64,
    /// Virtual size (a JSON number of bytes on the wire).
    pub size: Bytes,
    pub mapped_blocks: u64,
    /// Created for export (see [`Request::Create`]).
    #[serde(default)]
    pub export: bool,
}

/// Blocks of one space (data: pool blocks; metadata: 4 KiB blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceEntry {
    pub total: u64,
    pub used: u64,
    pub free: u64,
}

/// The running daemon's state: the pool's, the service's (Docker's devicemapper fields) and
/// its frontends'.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub transaction_id: u64,
    pub block_bytes: u64,
    pub data: SpaceEntry,
    pub metadata: SpaceEntry,
    pub volumes: usize,
    pub nbd_connections: usize,
    /// Why the pool takes no changes, when it does not.
    pub read_only: Option<String>,
    pub devicemapper: crate::service::ServiceStatus,
    /// The `dm.*` options the pool runs with.
    #[serde(default)]
    pub options: crate::vg::PoolConfig,
    /// Volumes served as ublk devices.
    #[serde(default)]
    pub ublk: Vec<AttachEntry>,
}

/// The daemon's answer to one [`Request`]; on the wire it is the `data` member of the
/// response line, shaped by the request it answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    /// `create`, `snapshot`.
    Created { thin_id: u64 },
    /// `export`: the volume and its mark.
    Exported { name: String, export: bool },
    /// `remove`: deleted now, or when its last user closes it.
    Removed { deferred: bool },
    /// `list`.
    Volumes(Vec<VolumeEntry>),
    /// `status`.
    Status(Box<DaemonStatus>),
    /// `extend`: the device added and what the volume group did.
    Extended { device: String, events: Vec<crate::vg::ExtendEvent> },
    /// `detach`: the device the volume had; `deferred` when it is still open and goes at its
    /// last close.
    Detached { device: String, deferred: bool },
    /// `attach`: the ublk block device.
    Attached { device: String },
    /// `metadata_snap`: the metadata block holding the snapshot (reserved or released).
    MetadataSnap { metadata_snap: u64 },
    /// `send`, `receive`: the size of the stream and the volume data it carried.
    Streamed { stream_bytes: u64, data_bytes: u64, records: u64 },
}

/// Why the daemon refused a request: a kind a client can match on, and the daemon's message
/// (which names the volume or device concerned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Error)]
#[error("{message}")]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

/// What kind of refusal; mirrors the service's error kinds at the process edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    NotFound,
    Exists,
    NoSpace,
    MinFreeSpace,
    ReadOnly,
    Busy,
    Invalid,
    /// The request line was not a request this daemon knows.
    BadRequest,
    Failed,
}

impl Refusal {
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

/// The line the daemon sends back: `{"ok":true,"data":REPLY}` or
/// `{"ok":false,"kind":KIND,"error":MESSAGE}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<RefusalKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    /// The reply as a typed value, or the daemon's refusal.
    pub fn into_result<T: serde::de::DeserializeOwned>(self) -> Result<T, ControlError> {
        if !self.ok {
            return Err(ControlError::Refused(Refusal {
                kind: self.kind.unwrap_or(RefusalKind::Failed),
                message: self.error.unwrap_or_else(|| "refused without a reason".into()),
            }));
        }
        serde_json::from_value(self.data).map_err(|e| ControlError::Protocol {
            path: PathBuf::new(),
            why: format!("unexpected reply: {e}"),
        })
    }
}

/// Executes requests inside the daemon.
pub trait Handler: Send + Sync {
    fn handle(&self, req: Request) -> Result<Reply, Refusal>;
}

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("cannot connect to the pool daemon at {path}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("talking to the pool daemon at {path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("bad answer from the pool daemon at {path}: {why}")]
    Protocol { path: PathBuf, why: String },
    #[error("the pool daemon refused: {0}")]
    Refused(Refusal),
}

impl ControlError {
    /// The refusal's kind, when the daemon refused (rather than could not be reached).
    pub fn refusal_kind(&self) -> Option<RefusalKind> {
        match self {
            Self::Refused(r) => Some(r.kind),
            _ => None,
        }
    }
}

/// A typed client of the daemon serving the pool whose state directory is `dir`.
#[derive(Debug, Clone)]
pub struct Client {
    dir: PathBuf,
}

impl Client {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The daemon's state directory (its control socket, and the FIFOs of streams).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a daemon's socket is there (it may still refuse connections if it died).
    pub fn socket_exists(&self) -> bool {
        socket_path(&self.dir).exists()
    }

    fn call<T: serde::de::DeserializeOwned>(&self, req: &Request) -> Result<T, ControlError> {
        request(&self.dir, req)?.into_result()
    }

    /// A `send` or `receive`, answered when the whole stream has passed (no reply deadline:
    /// the stream's own end, or the peer closing the FIFO, ends it).
    pub fn stream(&self, req: &Request) -> Result<Reply, ControlError> {
        request_with(&self.dir, req, None)?.into_result()
    }

    /// The reply as JSON, for callers that pass it on (the appliance's agent).
    pub fn call_json(&self, req: &Request) -> Result<serde_json::Value, ControlError> {
        self.call(req)
    }

    /// Creates a volume for this machine's own use (not offered under `--exports flagged`).
    pub fn create(&self, name: &str, size: Bytes) -> Result<u64, ControlError> {
        let r: CreatedReply = self.call(&Request::Create {
            name: name.into(),
            size,
            export: false,
            encrypted: false,
            luks_header: None,
        })?;
        Ok(r.thin_id)
    }

    /// Creates a volume for export to NBD clients.
    pub fn create_for_export(&self, name: &str, size: Bytes) -> Result<u64, ControlError> {
        let r: CreatedReply = self.call(&Request::Create {
            name: name.into(),
            size,
            export: true,
            encrypted: false,
            luks_header: None,
        })?;
        Ok(r.thin_id)
    }

    /// Marks a volume as created for export, or takes the mark away.
    pub fn set_export(&self, name: &str, export: bool) -> Result<(), ControlError> {
        let _: ExportedReply = self.call(&Request::Export { name: name.into(), export })?;
        Ok(())
    }

    pub fn snapshot(&self, origin: &str, name: &str) -> Result<u64, ControlError> {
        let req = Request::Snapshot { origin: origin.into(), name: name.into() };
        let r: CreatedReply = self.call(&req)?;
        Ok(r.thin_id)
    }

    /// Removes a volume; true when its deletion was deferred until its last user closes it.
    pub fn remove(&self, name: &str) -> Result<bool, ControlError> {
        let r: RemovedReply = self.call(&Request::Remove { name: name.into() })?;
        Ok(r.deferred)
    }

    pub fn list(&self) -> Result<Vec<VolumeEntry>, ControlError> {
        self.call(&Request::List)
    }

    pub fn status(&self) -> Result<DaemonStatus, ControlError> {
        self.call(&Request::Status)
    }

    /// Attaches a volume as a ublk device; returns its path (`/dev/ublkbN`).
    pub fn attach(&self, name: &str) -> Result<PathBuf, ControlError> {
        let r: AttachedReply = self.call(&Request::Attach { name: name.into() })?;
        Ok(r.device.into())
    }

    /// Detaches a volume's ublk device; returns the path it had.
    pub fn detach(&self, name: &str) -> Result<PathBuf, ControlError> {
        let r: AttachedReply =
            self.call(&Request::Detach { name: name.into(), deferred: false })?;
        Ok(r.device.into())
    }

    /// Detaches a volume's ublk device, or when it is still open, as soon as its last user
    /// closes it; returns the path it had and whether the removal was deferred.
    pub fn detach_deferred(&self, name: &str) -> Result<(PathBuf, bool), ControlError> {
        let r: DetachedReply = self.call(&Request::Detach { name: name.into(), deferred: true })?;
        Ok((r.device.into(), r.deferred))
    }

    /// Reserves or releases the pool's metadata snapshot; returns its metadata block.
    pub fn metadata_snap(&self, action: MetadataSnapAction) -> Result<u64, ControlError> {
        let r: MetadataSnapReply = self.call(&Request::MetadataSnap { action })?;
        Ok(r.metadata_snap)
    }
}

#[derive(Deserialize)]
struct AttachedReply {
    device: String,
}

#[derive(Deserialize)]
struct DetachedReply {
    device: String,
    #[serde(default)]
    deferred: bool,
}

#[derive(Deserialize)]
struct MetadataSnapReply {
    metadata_snap: u64,
}

/// Checks the reply's shape only; its fields echo the request.
#[derive(Deserialize)]
#[allow(dead_code)]
struct ExportedReply {
    name: String,
    export: bool,
}

#[derive(Deserialize)]
struct CreatedReply {
    thin_id: u64,
}

#[derive(Deserialize)]
struct RemovedReply {
    deferred: bool,
}

pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("control.sock")
}

/// Sends one request to the daemon serving the pool in `dir` and waits for its answer.
pub fn request(dir: &Path, req: &Request) -> Result<Response, ControlError> {
    request_with(dir, req, Some(Duration::from_secs(300)))
}

/// As [`request`], waiting at most `timeout` for the answer (None: as long as it takes).
pub fn request_with(
    dir: &Path,
    req: &Request,
    timeout: Option<Duration>,
) -> Result<Response, ControlError> {
    let path = socket_path(dir);
    let io_err = |source| ControlError::Io { path: path.clone(), source };
    let mut s = UnixStream::connect(&path)
        .map_err(|source| ControlError::Connect { path: path.clone(), source })?;
    s.set_read_timeout(timeout).map_err(io_err)?;
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
            let _ = reply(&s, &failure(RefusalKind::BadRequest, "request line too long".into()));
            return;
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => match handler.handle(req).map(serde_json::to_value) {
                Ok(Ok(data)) => Response { ok: true, kind: None, error: None, data },
                Ok(Err(e)) => failure(RefusalKind::Failed, format!("encoding the reply: {e}")),
                Err(r) => failure(r.kind, r.message),
            },
            Err(e) => failure(RefusalKind::BadRequest, format!("bad request: {e}")),
        };
        if reply(&s, &resp).is_err() {
            return;
        }
    }
}

fn failure(kind: RefusalKind, error: String) -> Response {
    Response { ok: false, kind: Some(kind), error: Some(error), data: serde_json::Value::Null }
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
        fn handle(&self, req: Request) -> Result<Reply, Refusal> {
            let mut v = self.0.lock().unwrap();
            match req {
                Request::Create { name, size, .. } => {
                    if v.contains(&name) {
                        return Err(Refusal::new(RefusalKind::Exists, format!("exists: {name}")));
                    }
                    v.push(name);
                    Ok(Reply::Created { thin_id: size.get() })
                }
                Request::List => Ok(Reply::Volumes(
                    v.iter()
                        .map(|n| VolumeEntry {
                            name: n.clone(),
                            thin_id: 1,
                            size: Bytes::new(4096),
                            mapped_blocks: 0,
                            export: false,
                        })
                        .collect(),
                )),
                _ => Err(Refusal::new(RefusalKind::Invalid, "unsupported")),
            }
        }
    }

    #[test]
    fn rt_control_messages() {
        let r = Request::Snapshot { origin: "a".into(), name: "b".into() };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"op":"snapshot","origin":"a","name":"b"}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let ok = Response {
            ok: true,
            kind: None,
            error: None,
            data: serde_json::to_value(Reply::Removed { deferred: true }).unwrap(),
        };
        let line = serde_json::to_string(&ok).unwrap();
        assert_eq!(line, r#"{"ok":true,"data":{"deferred":true}}"#);
        assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), ok);
        let no = failure(RefusalKind::NotFound, "not found: volume x".into());
        let line = serde_json::to_string(&no).unwrap();
        assert_eq!(
            line,
            r#"{"ok":false,"kind":"not_found","error":"not found: volume x","data":null}"#
        );
        let back = serde_json::from_str::<Response>(&line).unwrap().into_result::<Reply>();
        assert_eq!(back.unwrap_err().refusal_kind(), Some(RefusalKind::NotFound));
    }

    #[test]
    fn rt_attach_messages() {
        let r = Request::Attach { name: "store".into() };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"op":"attach","name":"store"}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let d = Request::Detach { name: "store".into(), deferred: false };
        assert_eq!(serde_json::to_string(&d).unwrap(), r#"{"op":"detach","name":"store"}"#);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"detach","name":"store"}"#).unwrap(),
            d
        );
        let dd = Request::Detach { name: "c1".into(), deferred: true };
        let s = serde_json::to_string(&dd).unwrap();
        assert_eq!(s, r#"{"op":"detach","name":"c1","deferred":true}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), dd);
        let a = serde_json::to_value(Reply::Attached { device: "/dev/ublkb0".into() }).unwrap();
        assert_eq!(a, serde_json::json!({"device": "/dev/ublkb0"}));
        let r = Reply::Detached { device: "/dev/ublkb3".into(), deferred: true };
        let v = serde_json::to_value(r).unwrap();
        assert_eq!(v, serde_json::json!({"device": "/dev/ublkb3", "deferred": true}));
    }

    #[test]
    fn control_socket_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let h = serve(&socket_path(dir.path()), Arc::new(Names(Mutex::new(vec![]))), stop.clone())
            .unwrap();
        let mode = std::fs::metadata(socket_path(dir.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let c = Client::new(dir.path());
        assert_eq!(c.create("v", Bytes::new(7)).unwrap(), 7);
        match c.create("v", Bytes::new(7)) {
            Err(ControlError::Refused(r)) => {
                assert_eq!((r.kind, r.message.as_str()), (RefusalKind::Exists, "exists: v"))
            }
            other => panic!("expected an Exists refusal, got {other:?}"),
        }
        assert_eq!(c.list().unwrap().iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["v"]);
        // A reply of the wrong shape is a protocol error, not a panic or a default.
        assert!(
            matches!(c.status(), Err(ControlError::Refused(r)) if r.kind == RefusalKind::Invalid)
        );
        // Garbage gets an error answer, not a hang.
        let mut s = UnixStream::connect(socket_path(dir.path())).unwrap();
        s.write_all(b"{nonsense}\n").unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        let r: Response = serde_json::from_str(&line).unwrap();
        assert_eq!(r.kind, Some(RefusalKind::BadRequest), "{line}");
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
        assert!(matches!(c.list(), Err(ControlError::Connect { .. })));
    }
}
