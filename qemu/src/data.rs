//! Host side of the data channel (bulk transfers beside the agent; the wire format is
//! documented with the guest's side in lamina-init's `containers::data`):
//! a JSON header line, then for a load frames of a u32 big-endian length and that many
//! bytes, ended by a 0 length; the guest answers with one JSON line (a save's line carries the
//! size of the bytes that follow).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Bytes per frame.
pub const FRAME: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("data channel {path}: {what}: {source}")]
    Io { path: PathBuf, what: &'static str, source: std::io::Error },
    #[error("data channel {path}: unexpected reply {line:?}")]
    Protocol { path: PathBuf, line: String },
    /// The guest refused or failed the transfer.
    #[error("{0}")]
    Remote(String),
}

pub struct DataClient {
    path: PathBuf,
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

/// Encodes one frame.
pub fn frame_header(len: usize) -> [u8; 4] {
    (len as u32).to_be_bytes()
}

impl DataClient {
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, DataError> {
        let io = |what| move |source| DataError::Io { path: path.into(), what, source };
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(25))
                }
                Err(e) => return Err(io("connect")(e)),
            }
        };
        let reader = BufReader::new(stream.try_clone().map_err(io("clone"))?);
        Ok(Self { path: path.into(), stream, reader })
    }

    fn io(&self, what: &'static str) -> impl Fn(std::io::Error) -> DataError + '_ {
        move |source| DataError::Io { path: self.path.clone(), what, source }
    }

    fn line(&mut self) -> Result<Value, DataError> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(|source| DataError::Io {
            path: self.path.clone(),
            what: "read",
            source,
        })?;
        if n == 0 {
            return Err(DataError::Protocol { path: self.path.clone(), line: "(closed)".into() });
        }
        serde_json::from_str(line.trim())
            .map_err(|_| DataError::Protocol { path: self.path.clone(), line })
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

    /// A header, then `src` as frames; the guest's answer.
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
        let mut buf = vec![0u8; FRAME];
        let mut total = 0u64;
        loop {
            let n = match src.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(DataError::Io { path: "(input)".into(), what: "read", source: e })
                }
            };
            self.stream.write_all(&frame_header(n)).map_err(self.io("write"))?;
            if n == 0 {
                break;
            }
            self.stream.write_all(&buf[..n]).map_err(self.io("write"))?;
            total += n as u64;
            sent(total);
        }
        let v = self.line()?;
        self.result(v)
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
