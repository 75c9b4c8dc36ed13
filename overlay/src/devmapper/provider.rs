//! Where the devicemapper driver's devices come from: thin volumes, their snapshots, and a
//! block device for a volume. [`DeviceProvider`] is the seam: [`PoolDaemon`] asks the running
//! pool daemon over its control socket (the appliance); tests use a provider over loop
//! devices on the host.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// The pool's space, and the Docker `info` fields it reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolUsage {
    pub data_used: u64,
    pub data_total: u64,
    /// Docker devicemapper fields the pool knows (Pool Name, Data Space Used, ...), in order.
    pub fields: Vec<(String, String)>,
}

/// Thin volumes and the block devices that expose them.
pub trait DeviceProvider: Send + Sync {
    /// A new thin volume of `size` bytes.
    fn create(&self, name: &str, size: u64) -> Result<()>;
    /// A thin snapshot of `origin` (O(1): they share every block until one is written).
    fn snapshot(&self, origin: &str, name: &str) -> Result<()>;
    /// Delete a volume; `Ok(true)` when the pool deferred it because it is still open.
    fn remove(&self, name: &str) -> Result<bool>;
    /// A block device for the volume.
    fn attach(&self, name: &str) -> Result<PathBuf>;
    /// Release the block device `attach` gave. A device still open (a lazily unmounted
    /// filesystem, or a mount another mount namespace holds) is refused as
    /// [`ErrorKind::Conflict`], or with `deferred` released once its last user closes it
    /// (dm's deferred remove); `Ok(true)` then.
    fn detach(&self, name: &str, device: &Path, deferred: bool) -> Result<bool>;
    fn usage(&self) -> Result<PoolUsage>;
}

/// The pool daemon (`thinpool serve`) of the state directory `dir`, over `dir/control.sock`:
/// one JSON object per line each way (thinpool's control protocol: `{"op":"create",...}` →
/// `{"ok":true,"data":...}`). Volumes, snapshots and removal are the daemon's own verbs; a
/// block device comes from its `attach`/`detach` verbs.
pub struct PoolDaemon {
    pub dir: PathBuf,
}

impl PoolDaemon {
    fn request(&self, req: serde_json::Value) -> Result<serde_json::Value> {
        let path = self.dir.join("control.sock");
        let op = req["op"].as_str().unwrap_or("?").to_string();
        let ctx = |what: &str| format!("pool daemon at {}: {what} `{op}`", path.display());
        let mut s = UnixStream::connect(&path).map_err(|e| {
            Error::with_source(ErrorKind::Unsupported, ctx("cannot connect for"), e)
        })?;
        s.set_read_timeout(Some(Duration::from_secs(300)))
            .map_err(|e| Error::with_source(ErrorKind::Io, ctx("set timeout for"), e))?;
        let mut line = req.to_string().into_bytes();
        line.push(b'\n');
        s.write_all(&line).map_err(|e| Error::with_source(ErrorKind::Io, ctx("send"), e))?;
        let mut answer = String::new();
        BufReader::new((&s).take(1 << 20))
            .read_line(&mut answer)
            .map_err(|e| Error::with_source(ErrorKind::Io, ctx("read the answer to"), e))?;
        let v: serde_json::Value = serde_json::from_str(&answer)
            .map_err(|e| Error::with_source(ErrorKind::Io, ctx("bad answer to"), e))?;
        if v["ok"].as_bool() == Some(true) {
            return Ok(v["data"].clone());
        }
        let msg = v["error"].as_str().unwrap_or("no error text").to_string();
        // The daemon's refusal kinds (thinpool `daemon::control::RefusalKind`).
        let (kind, hint) = match v["kind"].as_str().unwrap_or("") {
            "not_found" => (ErrorKind::NotFound, ""),
            "exists" | "busy" => (ErrorKind::Conflict, ""),
            "no_space" | "min_free_space" => (ErrorKind::Limit, ""),
            "invalid" => (ErrorKind::Invalid, ""),
            // A verb this daemon does not know: `attach`/`detach` come with the daemon's
            // block-device attach (ublk); older daemons have only the volume verbs.
            "bad_request" => (
                ErrorKind::Unsupported,
                " (this pool daemon has no such verb: the devicemapper driver needs its \
                 `attach`/`detach` verbs for a block device per volume)",
            ),
            _ => (ErrorKind::Io, ""),
        };
        let msg = format!("{msg}{hint}");
        Err(Error::new(kind, format!("{}: {msg}", ctx("refused"))))
    }
}

impl DeviceProvider for PoolDaemon {
    fn create(&self, name: &str, size: u64) -> Result<()> {
        self.request(serde_json::json!({"op": "create", "name": name, "size": size})).map(drop)
    }

    fn snapshot(&self, origin: &str, name: &str) -> Result<()> {
        self.request(serde_json::json!({"op": "snapshot", "origin": origin, "name": name}))
            .map(drop)
    }

    fn remove(&self, name: &str) -> Result<bool> {
        let v = self.request(serde_json::json!({"op": "remove", "name": name}))?;
        Ok(v["deferred"].as_bool().unwrap_or(false))
    }

    fn attach(&self, name: &str) -> Result<PathBuf> {
        let v = self.request(serde_json::json!({"op": "attach", "name": name}))?;
        v["device"].as_str().map(PathBuf::from).ok_or_else(|| {
            Error::new(ErrorKind::Io, format!("pool daemon: attach {name}: no device in {v}"))
        })
    }

    fn detach(&self, name: &str, device: &Path, deferred: bool) -> Result<bool> {
        let _ = device;
        let v =
            self.request(serde_json::json!({"op": "detach", "name": name, "deferred": deferred}))?;
        Ok(v["deferred"].as_bool().unwrap_or(false))
    }

    fn usage(&self) -> Result<PoolUsage> {
        let v = self.request(serde_json::json!({"op": "status"}))?;
        let mut fields = Vec::new();
        if let Some(m) = v["devicemapper"].as_object() {
            for (k, val) in m {
                let s = match val {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                fields.push((k.clone(), s));
            }
        }
        Ok(PoolUsage {
            data_used: v["data"]["used"].as_u64().unwrap_or(0)
                * v["block_bytes"].as_u64().unwrap_or(0),
            data_total: v["data"]["total"].as_u64().unwrap_or(0)
                * v["block_bytes"].as_u64().unwrap_or(0),
            fields,
        })
    }
}
