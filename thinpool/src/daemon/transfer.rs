//! `send` and `receive` through the daemon that serves the pool: the control request names a
//! FIFO the client made in the daemon's state directory (mode 0600, like its control
//! socket), and the stream passes through it while the request waits for the daemon's answer.
//!
//! ```text
//! client                                   daemon (control thread)
//! mkfifo STATE/stream.PID.N.fifo
//! → {"op":"send","snap":S,"path":FIFO}     opens FIFO for writing, send::send into it
//! reads FIFO into `out` until EOF          ← {"ok":true,"data":{"stream_bytes":…}}
//! → {"op":"receive","name":N,"path":FIFO}  opens FIFO for reading, send::receive from it
//! copies `input` into FIFO, closes it      ← refusal (cut, corrupt, exists…) or Streamed
//! ```
//! The daemon stays the pool's only opener: the stream is made and applied by its own pool
//! (for a receive through its temporary volume, see [`crate::delta::send`]). A client that
//! closes its end early shows the daemon EOF (a receive refuses the cut stream and drops its
//! temporary volume) or EPIPE (a send stops); a daemon that refuses before opening the FIFO
//! is met by a helper opening the other end, so this side's blocking open always returns.

use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::control::{Client, ControlError, Reply, Request};
use crate::delta::send::Stats;
use crate::units::Bytes;

/// Why a send or receive through the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("cannot make the FIFO {path}")]
    Fifo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The daemon refused (a cut or corrupt stream, an unknown volume, …) or was not there.
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("copying the stream")]
    Copy(#[source] io::Error),
    #[error("unexpected answer from the pool daemon: {0}")]
    Unexpected(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    FromDaemon,
    ToDaemon,
}

/// FIFOs of one process are told apart by a counter (the appliance's data channel and the
/// agent may stream at the same time).
static NEXT: AtomicU64 = AtomicU64::new(0);

impl Client {
    /// `send`: the daemon writes volume `snap` as a stream (only what differs from `from`,
    /// when given) into `out`.
    pub fn send_to(
        &self,
        snap: &str,
        from: Option<&str>,
        out: &mut dyn Write,
    ) -> Result<Stats, TransferError> {
        let req = |path| Request::Send { snap: snap.into(), from: from.map(Into::into), path };
        streamed(self.through_fifo(req, Direction::FromDaemon, &mut io::empty(), out)?)
    }

    /// `receive`: the daemon reads a stream from `input` into a new volume `name`, committed
    /// only when the whole stream checked out (an incremental applies to `base`, default the
    /// base the stream names).
    pub fn receive_from(
        &self,
        name: &str,
        base: Option<&str>,
        input: &mut dyn Read,
    ) -> Result<Stats, TransferError> {
        let req = |path| Request::Receive { name: name.into(), base: base.map(Into::into), path };
        streamed(self.through_fifo(req, Direction::ToDaemon, input, &mut io::sink())?)
    }

    /// Creates a volume that starts with `header` (see [`crate::luks`]); returns its thin id.
    /// The header (16 MiB by cryptsetup's defaults) is too large for a request line, so it
    /// passes through a FIFO like a receive's stream. `export`: see [`Request::Create`].
    pub fn create_encrypted(
        &self,
        name: &str,
        size: Bytes,
        header: &crate::luks::Header,
        export: bool,
    ) -> Result<u64, TransferError> {
        let req = |path| Request::Create {
            name: name.into(),
            size,
            export,
            encrypted: true,
            luks_header: Some(path),
        };
        let mut bytes = header.bytes();
        match self.through_fifo(req, Direction::ToDaemon, &mut bytes, &mut io::sink())? {
            Reply::Created { thin_id } => Ok(thin_id),
            other => Err(TransferError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Sends the request `req(FIFO)` and moves the bytes through the FIFO (`input` to the
    /// daemon, or the daemon's to `out`) while it answers; returns the daemon's reply.
    fn through_fifo(
        &self,
        req: impl FnOnce(String) -> Request,
        dir: Direction,
        input: &mut dyn Read,
        out: &mut dyn Write,
    ) -> Result<Reply, TransferError> {
        use rustix::fs::{FileType, Mode, CWD};
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let fifo = self.dir().join(format!("stream.{}.{n}.fifo", std::process::id()));
        let _ = std::fs::remove_file(&fifo);
        rustix::fs::mknodat(CWD, &fifo, FileType::Fifo, Mode::RUSR | Mode::WUSR, 0)
            .map_err(|e| TransferError::Fifo { path: fifo.clone(), source: e.into() })?;
        struct Remove<'a>(&'a Path);
        impl Drop for Remove<'_> {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(self.0);
            }
        }
        let _remove = Remove(&fifo);
        let request = req(fifo.display().to_string());
        // Set once this side's open of the FIFO returned.
        let opened = AtomicBool::new(false);
        std::thread::scope(|sc| {
            let (fifo, opened) = (fifo.as_path(), &opened);
            let answer = sc.spawn(move || {
                let r = self.stream(&request);
                if r.is_err() {
                    // The daemon may have refused before opening the FIFO: hold its other
                    // end open until this side's open has returned (then EOF or EPIPE).
                    // O_NONBLOCK: a writer's open fails (ENXIO) until a reader is there, so
                    // it is tried again.
                    let mut other = None;
                    while !opened.load(Ordering::SeqCst) {
                        if other.is_none() {
                            other = std::fs::OpenOptions::new()
                                .read(dir == Direction::ToDaemon)
                                .write(dir == Direction::FromDaemon)
                                .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                                .open(fifo)
                                .ok();
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                r
            });
            let file = match dir {
                Direction::FromDaemon => std::fs::File::open(fifo),
                Direction::ToDaemon => std::fs::OpenOptions::new().write(true).open(fifo),
            };
            opened.store(true, Ordering::SeqCst);
            // The FIFO is closed at the end of the copy (the closure owns it), so a receive
            // that was cut short shows the daemon EOF rather than waiting.
            let copied = file.and_then(|mut f| match dir {
                Direction::FromDaemon => io::copy(&mut f, out),
                Direction::ToDaemon => io::copy(input, &mut f),
            });
            let reply = answer
                .join()
                .map_err(|_| TransferError::Unexpected("the request thread panicked".into()))??;
            // The daemon's answer first: when it refused, the copy failed because of that.
            copied.map_err(TransferError::Copy)?;
            Ok(reply)
        })
    }
}

fn streamed(reply: Reply) -> Result<Stats, TransferError> {
    match reply {
        Reply::Streamed { stream_bytes, data_bytes, records } => {
            Ok(Stats { stream_bytes, data_bytes, records })
        }
        other => Err(TransferError::Unexpected(format!("{other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::control::{self, Handler, Refusal, RefusalKind};
    use std::sync::Arc;

    /// A daemon stand-in: a send writes `payload` into the FIFO; a receive reads the FIFO to
    /// its end and refuses anything but `payload` (as a cut stream is refused).
    struct Fake {
        payload: Vec<u8>,
    }

    impl Handler for Fake {
        fn handle(&self, req: Request) -> Result<Reply, Refusal> {
            let streamed = |n: usize| Reply::Streamed {
                stream_bytes: n as u64,
                data_bytes: n as u64,
                records: 1,
            };
            match req {
                Request::Send { snap, path, .. } if snap == "s" => {
                    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                    f.write_all(&self.payload).unwrap();
                    Ok(streamed(self.payload.len()))
                }
                Request::Receive { path, .. } => {
                    let mut got = Vec::new();
                    std::fs::File::open(path).unwrap().read_to_end(&mut got).unwrap();
                    if got != self.payload {
                        return Err(Refusal::new(RefusalKind::Invalid, "the stream ends early"));
                    }
                    Ok(streamed(got.len()))
                }
                _ => Err(Refusal::new(RefusalKind::NotFound, "no volume")),
            }
        }
    }

    #[test]
    fn streams_pass_the_fifo_and_refusals_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let h = control::serve(
            &control::socket_path(dir.path()),
            Arc::new(Fake { payload: payload.clone() }),
            stop.clone(),
        )
        .unwrap();
        let c = Client::new(dir.path());
        let mut out = Vec::new();
        let s = c.send_to("s", None, &mut out).unwrap();
        assert_eq!((s.stream_bytes, out.len()), (payload.len() as u64, payload.len()));
        assert!(out == payload);
        // Refused before the daemon opened the FIFO: this side's open still returns.
        let e = c.send_to("nope", None, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(&e, TransferError::Control(ControlError::Refused(r)) if r.kind == RefusalKind::NotFound),
            "{e:?}"
        );
        let s = c.receive_from("r", None, &mut &payload[..]).unwrap();
        assert_eq!(s.stream_bytes, payload.len() as u64);
        let e = c.receive_from("r", None, &mut &payload[..1000]).unwrap_err();
        assert!(
            matches!(&e, TransferError::Control(ControlError::Refused(r)) if r.message.contains("ends early")),
            "{e:?}"
        );
        // No FIFO is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".fifo"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
    }
}
