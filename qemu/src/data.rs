//! Host side of the data channel (bulk transfers beside the agent; the wire format is
//! documented with the guest's side in lamina-init's `containers::data`):
//! a JSON header line, then for a load frames of a u32 big-endian length and that many
//! bytes, ended by a 0 length; the guest answers with one JSON line (a save's line carries the
//! size of the bytes that follow). A pool volume's send stream comes back as frames too (its
//! size is not known before its end), followed by the result line.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

/// Bytes per frame.
pub const FRAME: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("data channel {path}: {what}")]
    Io { path: PathBuf, what: &'static str, source: std::io::Error },
    #[error("data channel {path}: unexpected reply {line:?}")]
    Protocol { path: PathBuf, line: String },
    /// The guest refused or failed the transfer.
    #[error("{0}")]
    Remote(String),
}

/// The header of a pool-volume transfer: `{"op", "name"}`, plus the other volume an
/// incremental stream is relative to, under its key, when there is one.
fn volume_header(op: &str, name: &str, relative_to: Option<(&str, &str)>) -> Value {
    let mut h = json!({"op": op, "name": name});
    if let Some((key, volume)) = relative_to {
        h[key] = json!(volume);
    }
    h
}

pub struct DataClient {
    path: PathBuf,
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

/// Largest frame accepted from the guest (it sends 256 KiB).
pub const MAX_FRAME: usize = 4 << 20;

/// Encodes one frame.
pub fn frame_header(len: usize) -> [u8; 4] {
    (len as u32).to_be_bytes()
}

fn read_json_line(reader: &mut BufReader<UnixStream>, path: &Path) -> Result<Value, DataError> {
    let mut line = String::new();
    let n = reader.read_line(&mut line).map_err(|source| DataError::Io {
        path: path.into(),
        what: "read",
        source,
    })?;
    if n == 0 {
        return Err(DataError::Protocol { path: path.into(), line: "(closed)".into() });
    }
    serde_json::from_str(line.trim()).map_err(|_| DataError::Protocol { path: path.into(), line })
}

/// `src` as frames and the end frame, unless the guest answered first (then Ok: its answer
/// tells what happened).
fn send_frames(
    stream: &mut UnixStream,
    path: &Path,
    src: &mut dyn Read,
    sent: &mut dyn FnMut(u64),
    answered: &AtomicBool,
) -> Result<(), DataError> {
    let io = |what| move |source| DataError::Io { path: path.into(), what, source };
    let mut buf = vec![0u8; FRAME];
    let mut total = 0u64;
    loop {
        if answered.load(Ordering::SeqCst) {
            return Ok(());
        }
        let n = match src.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(DataError::Io { path: "(input)".into(), what: "read", source: e })
            }
        };
        stream.write_all(&frame_header(n)).map_err(io("write"))?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).map_err(io("write"))?;
        total += n as u64;
        sent(total);
    }
}

impl DataClient {
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, DataError> {
        let io = |what| move |source| DataError::Io { path: path.into(), what, source };
        let stream = crate::connect_retrying(path, timeout).map_err(io("connect"))?;
        let reader = BufReader::new(stream.try_clone().map_err(io("clone"))?);
        Ok(Self { path: path.into(), stream, reader })
    }

    fn io(&self, what: &'static str) -> impl Fn(std::io::Error) -> DataError + '_ {
        move |source| DataError::Io { path: self.path.clone(), what, source }
    }

    fn line(&mut self) -> Result<Value, DataError> {
        read_json_line(&mut self.reader, &self.path)
    }

    fn result(&self, v: Value) -> Result<Value, DataError> {
        match v["ok"].as_bool() {
            Some(true) => Ok(v.get("result").cloned().unwrap_or(v)),
            Some(false) => Err(DataError::Remote(v["error"].as_str().unwrap_or("").to_owned())),
            None => Err(DataError::Protocol { path: self.path.clone(), line: v.to_string() }),
        }
    }

    /// Streams an image archive into the guest's store; `sent` sees the running byte count.
    /// Returns the images it held.
    pub fn load(
        &mut self,
        src: &mut dyn Read,
        sent: &mut dyn FnMut(u64),
    ) -> Result<Value, DataError> {
        self.upload(&json!({"op": "image.load"}), src, sent)
    }

    /// Streams a tar into a named volume (`lamina volume restore`).
    pub fn restore(
        &mut self,
        volume: &str,
        src: &mut dyn Read,
        sent: &mut dyn FnMut(u64),
    ) -> Result<Value, DataError> {
        self.upload(&json!({"op": "volume.restore", "name": volume}), src, sent)
    }

    /// Fetches a named volume's content as a tar (`lamina volume backup`).
    pub fn backup(
        &mut self,
        volume: &str,
        out: &mut dyn Write,
        got: &mut dyn FnMut(u64, u64),
    ) -> Result<u64, DataError> {
        self.download(&json!({"op": "volume.backup", "name": volume}), out, got)
    }

    /// Streams a pool volume's send stream (`lamina volume receive`) into a new volume
    /// `name` of the guest's pool (an incremental onto `base`, default the base the stream
    /// names). Returns the guest's result.
    pub fn receive(
        &mut self,
        name: &str,
        base: Option<&str>,
        src: &mut dyn Read,
        sent: &mut dyn FnMut(u64),
    ) -> Result<Value, DataError> {
        self.upload(&volume_header("volume.receive", name, base.map(|b| ("base", b))), src, sent)
    }

    /// Fetches a pool volume (snapshot) as a send stream (`lamina volume send`), whole or
    /// only what differs from `from`, into `out`; `got` sees the running count. Returns the
    /// guest's result (the stream's size and the data it carried).
    pub fn send(
        &mut self,
        name: &str,
        from: Option<&str>,
        out: &mut dyn Write,
        got: &mut dyn FnMut(u64),
    ) -> Result<Value, DataError> {
        let h = volume_header("volume.send", name, from.map(|f| ("from", f)));
        let header = format!("{h}\n");
        self.stream.write_all(header.as_bytes()).map_err(self.io("write"))?;
        let v = self.line()?;
        if v["ready"] != true {
            return self.result(v);
        }
        let mut buf = vec![0u8; FRAME];
        let mut total = 0u64;
        loop {
            let mut len = [0u8; 4];
            self.reader.read_exact(&mut len).map_err(self.io("read"))?;
            let len = u32::from_be_bytes(len) as usize;
            if len == 0 {
                break;
            }
            if len > MAX_FRAME {
                let line = format!("a frame of {len} bytes");
                return Err(DataError::Protocol { path: self.path.clone(), line });
            }
            buf.resize(buf.len().max(len), 0);
            self.reader.read_exact(&mut buf[..len]).map_err(self.io("read"))?;
            out.write_all(&buf[..len]).map_err(|e| DataError::Io {
                path: "(output)".into(),
                what: "write",
                source: e,
            })?;
            total += len as u64;
            got(total);
        }
        out.flush().map_err(|e| DataError::Io {
            path: "(output)".into(),
            what: "flush",
            source: e,
        })?;
        let v = self.line()?;
        self.result(v)
    }

    /// A header, then `src` as frames; the guest's answer. The answer is read on its own
    /// thread meanwhile: a guest that refuses before the end (a volume receive the pool
    /// daemon refused) answers at once, and the rest of `src` is not sent.
    fn upload(
        &mut self,
        header: &Value,
        src: &mut dyn Read,
        sent: &mut dyn FnMut(u64),
    ) -> Result<Value, DataError> {
        let header = format!("{header}\n");
        self.stream.write_all(header.as_bytes()).map_err(self.io("write"))?;
        let v = self.line()?;
        if v["ready"] != true {
            return self.result(v);
        }
        let answered = AtomicBool::new(false);
        let (reader, path) = (&mut self.reader, &self.path);
        let (answer, sending) = std::thread::scope(|sc| {
            let answered = &answered;
            let answer = sc.spawn(move || {
                let v = read_json_line(reader, path);
                answered.store(true, Ordering::SeqCst);
                v
            });
            let sending = send_frames(&mut self.stream, path, src, sent, answered);
            if sending.is_err() {
                // Nothing more is sent: the guest sees the host go away and answers, or
                // already did; either way the reader ends.
                let _ = self.stream.shutdown(std::net::Shutdown::Write);
            }
            (answer.join(), sending)
        });
        let v = answer.map_err(|_| DataError::Protocol {
            path: self.path.clone(),
            line: "(the reader thread panicked)".into(),
        })?;
        match (v, sending) {
            // The guest's answer explains a failed send (it refused, then stopped reading).
            (Ok(v), _) => self.result(v),
            (Err(_), Err(e)) | (Err(e), Ok(())) => Err(e),
        }
    }

    /// Fetches an image archive (`docker` or `oci`) into `out`; `got` sees the running count
    /// and the total. Returns the bytes written.
    pub fn save(
        &mut self,
        image: &str,
        format: &str,
        out: &mut dyn Write,
        got: &mut dyn FnMut(u64, u64),
    ) -> Result<u64, DataError> {
        self.download(&json!({"op": "image.save", "image": image, "format": format}), out, got)
    }

    /// A header, then the guest's sized answer into `out`.
    fn download(
        &mut self,
        header: &Value,
        out: &mut dyn Write,
        got: &mut dyn FnMut(u64, u64),
    ) -> Result<u64, DataError> {
        let header = format!("{header}\n");
        self.stream.write_all(header.as_bytes()).map_err(self.io("write"))?;
        let v = self.line()?;
        let v = self.result(v)?;
        let size = v["size"]
            .as_u64()
            .ok_or_else(|| DataError::Protocol { path: self.path.clone(), line: v.to_string() })?;
        let mut left = size;
        let mut buf = vec![0u8; FRAME];
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = self.reader.read(&mut buf[..want]).map_err(self.io("read"))?;
            if n == 0 {
                return Err(DataError::Protocol {
                    path: self.path.clone(),
                    line: format!("closed with {left} of {size} bytes to come"),
                });
            }
            out.write_all(&buf[..n]).map_err(|e| DataError::Io {
                path: "(output)".into(),
                what: "write",
                source: e,
            })?;
            left -= n as u64;
            got(size - left, size);
        }
        Ok(size)
    }
}
