//! The container store as the host drives it: images loaded, listed, removed and saved.
//!
//! One [`Images`] owns the layer store (`overlay::Store` holds the store's flock, so there is
//! exactly one, behind a mutex) once the pool's XFS is mounted; the agent's `image.*` verbs
//! and the data channel ([`data`]) share it. Staging files of loads and saves live on the
//! store's XFS (an image does not fit in the guest's RAM):
//!
//! ```text
//! /var/lib/lamina/
//! ├── overlay2/            the layer store (overlay::store draws it)
//! └── incoming/            load-N.raw (bytes as sent), load-N.tar (decompressed),
//!                          save-N.tar; removed when the transfer ends, and at every open
//! ```

pub mod cgroup;
pub mod data;
pub mod error;
pub mod network;
pub mod service;
pub mod spec;
pub mod system;
pub mod thin;

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use overlay::source::Compression;
use overlay::{ExportFormat, Store};
use serde_json::{json, Value};

use self::data::{DataError, Header};
use self::error::{Kind, Result, StoreError};
use crate::options::Driver;

/// Where the layer store lives on the pool's XFS.
pub const STORE_ROOT: &str = "/var/lib/lamina/overlay2";
/// Staging of transfers.
pub const INCOMING: &str = "/var/lib/lamina/incoming";
/// The data channel's virtio-serial port.
pub const DATA_PORT: &str = "org.lamina.data.0";

/// The layer store, once it is open.
pub struct Images {
    /// `None` once closed for shutdown (the store's lock file keeps the XFS busy).
    store: Mutex<Option<Store>>,
    incoming: PathBuf,
    next: AtomicU64,
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images").field("incoming", &self.incoming).finish()
    }
}

fn driver(d: Driver) -> overlay::Driver {
    match d {
        Driver::Overlay2 => overlay::Driver::Overlay,
        Driver::Vfs => overlay::Driver::Vfs,
    }
}

/// One image as `image ls` shows it (Docker's `docker images` columns).
fn image_json(img: &overlay::ImageMeta, size: u64) -> Value {
    json!({
        "id": img.id.to_string(),
        "tags": img.tags,
        "layers": img.layers.len(),
        "size": size,
        "created": img.created,
    })
}

impl Images {
    /// Opens the store at `root` and clears what an interrupted transfer left in `incoming`.
    pub fn open(root: &Path, incoming: &Path, d: Driver) -> Result<Images> {
        let store = Store::open(root, driver(d))?;
        let _ = std::fs::remove_dir_all(incoming);
        std::fs::create_dir_all(incoming).map_err(|e| StoreError::io(incoming.display(), e))?;
        Ok(Images {
            store: Mutex::new(Some(store)),
            incoming: incoming.into(),
            next: AtomicU64::new(1),
        })
    }

    /// Runs `f` on the open store (waiting for a transfer that holds it).
    pub(crate) fn with<T>(&self, f: impl FnOnce(&Store) -> overlay::Result<T>) -> Result<T> {
        let g = self.store.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_ref() {
            Some(s) => Ok(f(s)?),
            None => Err(StoreError::new(Kind::Unavailable, "the store is shutting down")),
        }
    }

    /// Closes the store (at shutdown, before its filesystem is unmounted).
    pub fn close(&self) {
        self.store.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn staging(&self, what: &str) -> PathBuf {
        self.incoming.join(format!("{what}-{}", self.next.fetch_add(1, Ordering::SeqCst)))
    }

    /// `image ls`: every image with its size (all its layers).
    pub fn list(&self) -> Result<Value> {
        let (du, images) = self.with(|s| Ok((s.du()?, s.images()?)))?;
        Ok(Value::Array(
            images
                .iter()
                .map(|i| {
                    let size = du.images.iter().find(|u| u.id == i.id).map_or(0, |u| u.size);
                    image_json(i, size)
                })
                .collect(),
        ))
    }

    /// `image rm NAME`.
    pub fn remove(&self, name: &str) -> Result<Value> {
        let img = self.with(|s| s.remove_image(name))?;
        Ok(json!({"removed": img.id.to_string(), "tags": img.tags}))
    }

    /// Imports an archive file (OCI layout tar, oci-archive, docker-archive; the whole file
    /// gzip- or zstd-compressed, or not).
    pub fn import_file(&self, raw: &Path) -> Result<Value> {
        let head = {
            let mut h = [0u8; 8];
            let n = std::fs::File::open(raw)
                .and_then(|mut f| f.read(&mut h))
                .map_err(|e| StoreError::io(raw.display(), e))?;
            h[..n].to_vec()
        };
        let c = Compression::detect(&head)?;
        let tar = if c == Compression::None {
            raw.to_owned()
        } else {
            let tar = raw.with_extension("tar");
            let f = std::fs::File::open(raw).map_err(|e| StoreError::io(raw.display(), e))?;
            let mut r = c.reader(BufReader::new(f))?;
            let mut out =
                std::fs::File::create(&tar).map_err(|e| StoreError::io(tar.display(), e))?;
            std::io::copy(&mut r, &mut out).map_err(|e| {
                StoreError::new(Kind::Invalid, format!("decompressing the {c:?} archive: {e}"))
            })?;
            tar
        };
        let r = self.with(|s| s.import_image(&tar, None, None));
        let _ = std::fs::remove_file(&tar);
        let imgs = r?;
        Ok(Value::Array(
            imgs.iter()
                .map(|i| json!({"id": i.id.to_string(), "tags": i.tags, "layers": i.layers.len()}))
                .collect(),
        ))
    }

    /// One data-channel session: header, then the transfer. [`DataError::HostGone`] when
    /// the host went away (nothing to answer).
    pub fn session<S: Read + Write>(&self, s: &mut S) -> std::result::Result<(), DataError> {
        let line = data::read_line(s)?;
        let header: Header = match serde_json::from_str(&line) {
            Ok(h) => h,
            Err(e) => {
                let msg = Err(format!("bad data-channel header {line:?}: {e}"));
                return write(s, &data::reply_line(&msg));
            }
        };
        match header {
            Header::ImageLoad => self.receive(s, "image load", |raw| self.import_file(raw)),
            Header::VolumeRestore { name } => self.receive(s, "volume restore", |raw| {
                self.with(|st| st.volume_restore(&name, raw))?;
                Ok(json!({ "restored": name }))
            }),
            Header::ImageSave { image, format } => {
                let fmt = match format.as_str() {
                    "docker" | "docker-archive" => ExportFormat::Docker,
                    "oci" | "oci-archive" => ExportFormat::Oci,
                    other => {
                        let e = Err(format!("unknown format {other:?} (docker, oci)"));
                        return write(s, &data::reply_line(&e));
                    }
                };
                self.send(s, |out| self.with(|st| st.export(&image, out, fmt)).map(drop))
            }
            Header::VolumeBackup { name } => {
                self.send(s, |out| self.with(|st| st.volume_backup(&name, out)))
            }
            // The pool's volumes: through the pool daemon, not the layer store.
            Header::VolumeSend { name, from } => thin::send(s, &name, from.as_deref()),
            Header::VolumeReceive { name, base } => thin::receive(s, &name, base.as_deref()),
        }
    }

    /// The host's frames into a staging file, then `act` on it; the file goes either way.
    /// A transfer cut short is dropped before `act`: nothing of it reaches the store.
    fn receive<S: Read + Write>(
        &self,
        s: &mut S,
        what: &str,
        act: impl FnOnce(&Path) -> Result<Value>,
    ) -> std::result::Result<(), DataError> {
        write(s, "{\"ready\":true}\n")?;
        let raw = self.staging("in").with_extension("raw");
        let got = std::fs::File::create(&raw)
            .map_err(|source| DataError::Io { what: "create staging", source })
            .and_then(|mut f| {
                let n = data::copy_frames(s, &mut f)?;
                f.sync_all().map_err(|source| DataError::Io { what: "sync", source })?;
                Ok(n)
            });
        let reply = match got {
            Ok(n) => {
                tracing::info!("{what}: {n} bytes received");
                act(&raw)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&raw);
                crate::say(&format!("{what} interrupted ({}); nothing imported", units::chain(&e)));
                return Err(e);
            }
        };
        let _ = std::fs::remove_file(&raw);
        write(s, &data::reply_line(&reply))
    }

    /// `make` writes a staging file, which is sent after a line with its size.
    fn send<S: Read + Write>(
        &self,
        s: &mut S,
        make: impl FnOnce(&Path) -> Result<()>,
    ) -> std::result::Result<(), DataError> {
        let out = self.staging("out").with_extension("tar");
        let size = make(&out).and_then(|()| {
            std::fs::metadata(&out).map(|m| m.len()).map_err(|e| StoreError::io(out.display(), e))
        });
        let res = match size {
            Ok(n) => {
                write(s, &format!("{}\n", json!({"ok": true, "size": n})))?;
                std::fs::File::open(&out)
                    .and_then(|mut f| std::io::copy(&mut f, s))
                    .map(drop)
                    .map_err(|source| DataError::Io { what: "send", source })
            }
            Err(e) => write(s, &data::reply_line(&Err(e))),
        };
        let _ = std::fs::remove_file(&out);
        res
    }
}

fn write<W: Write + ?Sized>(w: &mut W, s: &str) -> std::result::Result<(), DataError> {
    w.write_all(s.as_bytes())
        .and_then(|()| w.flush())
        .map_err(|source| DataError::Io { what: "write", source })
}

/// The virtio-serial port as a byte stream whose read returns 0 once the host is gone.
struct Port(std::fs::File);

impl Port {
    /// Waits until the port is ready for `want`: false once the host is gone.
    fn ready(&self, want: rustix::event::PollFlags) -> std::io::Result<bool> {
        use rustix::event::{poll, PollFd, PollFlags};
        loop {
            let mut fds = [PollFd::new(&self.0, want)];
            poll(&mut fds, None)?;
            let ev = fds[0].revents();
            if ev.contains(want) {
                return Ok(true);
            }
            if ev.contains(PollFlags::HUP) {
                return Ok(false);
            }
        }
    }
}

impl Read for Port {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.ready(rustix::event::PollFlags::IN)? {
            self.0.read(buf)
        } else {
            Ok(0)
        }
    }
}

impl Write for Port {
    /// Fails once the host is gone: a blocking write would otherwise wait for the next host
    /// and hand it the rest of this session's bytes (virtio_console's `will_write_block`
    /// blocks while `!host_connected`; its poll reports EPOLLHUP then).
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.ready(rustix::event::PollFlags::OUT)? {
            self.0.write(buf)
        } else {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Serves the data port forever: waits for a host, runs its session, repeats.
pub fn serve_data(port: PathBuf, images: std::sync::Arc<std::sync::OnceLock<Images>>) {
    let file = loop {
        match std::fs::OpenOptions::new().read(true).write(true).open(&port) {
            Ok(f) => break f,
            Err(e) => {
                tracing::error!("data: cannot open {}: {e}; retrying", port.display());
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    };
    let mut p = Port(file);
    loop {
        // No host: the port reports POLLHUP; wait for one to connect (the port does not
        // signal the connect through poll, so look again every 100 ms).
        // With no host the port polls as HUP (and IN, reads giving 0).
        let mut fds = [rustix::event::PollFd::new(&p.0, rustix::event::PollFlags::IN)];
        let _ = rustix::event::poll(
            &mut fds,
            Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 100_000_000 }),
        );
        let ev = fds[0].revents();
        if ev.contains(rustix::event::PollFlags::HUP) || !ev.contains(rustix::event::PollFlags::IN)
        {
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        }
        let Some(images) = images.get() else {
            let e = StoreError::new(Kind::Unavailable, "the store is not up");
            let _ = write(&mut p, &data::reply_line(&Err(e)));
            drain(&mut p);
            continue;
        };
        match images.session(&mut p) {
            Ok(()) | Err(DataError::HostGone(_)) => {}
            Err(e) => {
                let e = units::chain(&e);
                tracing::warn!("data session: {e}");
                let _ = write(&mut p, &data::reply_line(&Err(e)));
                drain(&mut p);
            }
        }
    }
}

/// Reads and drops what the host still sends after a failed session, until it goes away.
fn drain(p: &mut Port) {
    let mut buf = [0u8; 64 << 10];
    while matches!(p.read(&mut buf), Ok(n) if n > 0) {}
}
