//! The data channel: bulk bytes between host and guest on the virtio-serial port
//! `org.lamina.data.0`, beside the agent's JSON lines (which stay responsive meanwhile).
//!
//! ```text
//! host → guest  {"op":"image.load"}\n                then frames: u32 big-endian length,
//!                                                    that many bytes; a 0 length ends them
//!               {"op":"image.save","image":NAME,"format":"docker"|"oci"}\n
//!               {"op":"volume.restore","name":NAME}\n   then frames, as a load
//!               {"op":"volume.backup","name":NAME}\n    answered as a save
//!               {"op":"volume.receive","name":NAME,"base":B?}\n  then frames, as a load
//!               {"op":"volume.send","name":SNAP,"from":B?}\n
//! guest → host  {"ready":true}\n                     (load: header read, send the frames)
//!               {"ok":true,"result":…}\n   or   {"ok":false,"error":"…"}\n
//!               save: {"ok":true,"size":N}\n and then N bytes
//!               volume.send: {"ready":true}\n, frames as a load's, then the result line
//! ```
//! `volume.send`/`volume.receive` carry the pool daemon's send stream (thinpool's
//! `delta::stream`) straight between the port and the daemon, never staged: its size is not
//! known up front (hence frames both ways), and a receive may be refused before its end
//! (the result line then comes early, and the guest drops the frames still on their way).
//! The host going away shows as a read of 0 bytes (virtio-serial: the port reports POLLHUP
//! once the host side of the chardev is closed). A load whose end frame never came is
//! dropped with its staging files: nothing of a half-streamed image reaches the store.
//! Pure framing here; the session logic takes any `Read`/`Write`, so it is tested over a
//! socketpair on the host.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// Longest header line.
pub const MAX_HEADER: usize = 4096;
/// Longest frame the guest accepts (the host sends 256 KiB).
pub const MAX_FRAME: u32 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op")]
pub enum Header {
    #[serde(rename = "image.load")]
    ImageLoad,
    #[serde(rename = "image.save")]
    ImageSave {
        image: String,
        #[serde(default = "docker")]
        format: String,
    },
    /// A named volume's content as a tar (`lamina volume backup`), sent like a save.
    #[serde(rename = "volume.backup")]
    VolumeBackup { name: String },
    /// A tar into a named volume (`lamina volume restore`), received like a load.
    #[serde(rename = "volume.restore")]
    VolumeRestore { name: String },
    /// A pool volume (snapshot) as the daemon's send stream, whole or from `from`.
    #[serde(rename = "volume.send")]
    VolumeSend {
        name: String,
        #[serde(default)]
        from: Option<String>,
    },
    /// A send stream into a new pool volume `name` (an incremental onto `base`, default the
    /// base the stream names).
    #[serde(rename = "volume.receive")]
    VolumeReceive {
        name: String,
        #[serde(default)]
        base: Option<String>,
    },
}

fn docker() -> String {
    "docker".into()
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("the host went away {0}")]
    HostGone(&'static str),
    #[error("data channel protocol: {0}")]
    Protocol(String),
    #[error("data channel {what}")]
    Io { what: &'static str, source: std::io::Error },
}

/// Reads one `\n`-terminated line, a byte at a time (what follows belongs to the frames).
pub fn read_line<R: Read + ?Sized>(r: &mut R) -> Result<String, DataError> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match r.read(&mut b) {
            Ok(0) => return Err(DataError::HostGone("before the end of a line")),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(DataError::Io { what: "read", source }),
        }
        if line.len() > MAX_HEADER {
            return Err(DataError::Protocol(format!("line longer than {MAX_HEADER} bytes")));
        }
    }
    String::from_utf8(line).map_err(|_| DataError::Protocol("line is not UTF-8".into()))
}

fn read_full<R: Read + ?Sized>(
    r: &mut R,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), DataError> {
    let mut at = 0;
    while at < buf.len() {
        match r.read(&mut buf[at..]) {
            Ok(0) => return Err(DataError::HostGone(what)),
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => return Err(DataError::Io { what: "read", source }),
        }
    }
    Ok(())
}

/// Copies frames from `r` to `out` until the end frame; the bytes copied.
pub fn copy_frames<R: Read + ?Sized>(r: &mut R, out: &mut dyn Write) -> Result<u64, DataError> {
    let mut total = 0u64;
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 4];
        read_full(r, &mut len, "in the middle of the stream")?;
        let len = u32::from_be_bytes(len);
        if len == 0 {
            return Ok(total);
        }
        if len > MAX_FRAME {
            return Err(DataError::Protocol(format!("frame of {len} bytes (max {MAX_FRAME})")));
        }
        buf.resize(len as usize, 0);
        read_full(r, &mut buf, "in the middle of a frame")?;
        out.write_all(&buf).map_err(|source| DataError::Io { what: "write", source })?;
        total += u64::from(len);
    }
}

/// The bytes of the host's frames as a `Read`: 0 at the end frame, an error when the host
/// went away before it (so a consumer never takes a cut transfer for a whole one).
pub struct FrameReader<'a, R: Read + ?Sized> {
    inner: &'a mut R,
    /// Bytes left in the current frame.
    left: u32,
    ended: bool,
}

impl<'a, R: Read + ?Sized> FrameReader<'a, R> {
    pub fn new(inner: &'a mut R) -> Self {
        Self { inner, left: 0, ended: false }
    }

    /// The port, e.g. to answer before the frames have ended.
    pub fn get_mut(&mut self) -> &mut R {
        self.inner
    }

    /// Whether the end frame was read.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Reads and drops the frames still to come, up to the end frame.
    pub fn drain(&mut self) -> Result<u64, DataError> {
        let mut rest = 0u64;
        loop {
            let mut buf = [0u8; 64 << 10];
            match self.read(&mut buf) {
                Ok(0) => return Ok(rest),
                Ok(n) => rest += n as u64,
                Err(e) => return Err(DataError::Io { what: "drain", source: e }),
            }
        }
    }

    fn next_frame(&mut self) -> Result<(), DataError> {
        let mut len = [0u8; 4];
        read_full(self.inner, &mut len, "in the middle of the stream")?;
        let len = u32::from_be_bytes(len);
        if len > MAX_FRAME {
            return Err(DataError::Protocol(format!("frame of {len} bytes (max {MAX_FRAME})")));
        }
        self.left = len;
        self.ended = len == 0;
        Ok(())
    }
}

impl<R: Read + ?Sized> Read for FrameReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.left == 0 {
            if self.ended || buf.is_empty() {
                return Ok(0);
            }
            self.next_frame().map_err(std::io::Error::other)?;
        }
        let want = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            let e = DataError::HostGone("in the middle of a frame");
            return Err(std::io::Error::other(e));
        }
        self.left -= n as u32;
        Ok(n)
    }
}

/// Bytes written as frames of at most `FRAME_OUT` bytes; [`FrameWriter::finish`] writes
/// what is buffered and the end frame.
pub struct FrameWriter<'a, W: Write + ?Sized> {
    inner: &'a mut W,
    buf: Vec<u8>,
    /// Payload bytes written so far.
    pub written: u64,
}

/// Frame size the guest sends.
pub const FRAME_OUT: usize = 256 << 10;

impl<'a, W: Write + ?Sized> FrameWriter<'a, W> {
    pub fn new(inner: &'a mut W) -> Self {
        Self { inner, buf: Vec::with_capacity(FRAME_OUT), written: 0 }
    }

    fn emit(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.inner.write_all(&(self.buf.len() as u32).to_be_bytes())?;
        self.inner.write_all(&self.buf)?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// The last frame and the end frame.
    pub fn finish(mut self) -> std::io::Result<u64> {
        self.emit()?;
        self.inner.write_all(&0u32.to_be_bytes())?;
        self.inner.flush()?;
        Ok(self.written)
    }
}

impl<W: Write + ?Sized> Write for FrameWriter<'_, W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = b.len().min(FRAME_OUT - self.buf.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() == FRAME_OUT {
            self.emit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.emit()?;
        self.inner.flush()
    }
}

/// Encodes one frame (host side, and tests).
pub fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + bytes.len());
    v.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    v.extend_from_slice(bytes);
    v
}

/// A reply line.
pub fn reply_line<E: std::fmt::Display>(r: &Result<serde_json::Value, E>) -> String {
    let v = match r {
        Ok(v) => serde_json::json!({"ok": true, "result": v}),
        Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
    };
    format!("{v}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rt_headers() {
        for h in [
            Header::ImageLoad,
            Header::ImageSave { image: "busybox:1".into(), format: "oci".into() },
        ] {
            let line = serde_json::to_string(&h).unwrap();
            assert_eq!(serde_json::from_str::<Header>(&line).unwrap(), h);
        }
        let h: Header = serde_json::from_str(r#"{"op":"image.save","image":"x"}"#).unwrap();
        assert_eq!(h, Header::ImageSave { image: "x".into(), format: "docker".into() });
        let e = serde_json::from_str::<Header>(r#"{"op":"image.nope"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown variant `image.nope`"), "{e}");
    }

    #[test]
    fn rt_frames() {
        let mut wire = b"{\"op\":\"image.load\"}\n".to_vec();
        wire.extend(frame(b"hello "));
        wire.extend(frame(b"world"));
        wire.extend(frame(b""));
        wire.extend(b"next");
        let mut r = &wire[..];
        assert_eq!(read_line(&mut r).unwrap(), r#"{"op":"image.load"}"#);
        let mut out = Vec::new();
        assert_eq!(copy_frames(&mut r, &mut out).unwrap(), 11);
        assert_eq!(out, b"hello world");
        assert_eq!(r, b"next", "the end frame is the last byte read");
    }

    #[test]
    fn rt_frame_reader_and_writer() {
        let payload: Vec<u8> = (0..(FRAME_OUT * 2 + 77) as u32).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        let mut w = FrameWriter::new(&mut wire);
        for c in payload.chunks(10_000) {
            w.write_all(c).unwrap();
        }
        assert_eq!(w.finish().unwrap(), payload.len() as u64);
        wire.extend(b"{\"ok\":true}\n");
        let mut r = &wire[..];
        let mut fr = FrameReader::new(&mut r);
        let mut back = Vec::new();
        fr.read_to_end(&mut back).unwrap();
        assert!(fr.ended() && back == payload);
        assert_eq!(read_line(&mut r).unwrap(), r#"{"ok":true}"#, "the line after the frames");
        // Drain after a consumer stopped early: up to the end frame, no further.
        let mut r = &wire[..];
        let mut fr = FrameReader::new(&mut r);
        fr.read_exact(&mut [0u8; 100]).unwrap();
        assert_eq!(fr.drain().unwrap(), payload.len() as u64 - 100);
        assert_eq!(r, b"{\"ok\":true}\n");
        // A cut is an error, never an end.
        let cut = &wire[..FRAME_OUT + 100];
        let e = FrameReader::new(&mut &cut[..]).read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("host went away"), "{e}");
    }

    #[test]
    fn rt_volume_stream_headers() {
        let h: Header =
            serde_json::from_str(r#"{"op":"volume.send","name":"s2","from":"s1"}"#).unwrap();
        assert_eq!(h, Header::VolumeSend { name: "s2".into(), from: Some("s1".into()) });
        let h: Header = serde_json::from_str(r#"{"op":"volume.receive","name":"s1"}"#).unwrap();
        assert_eq!(h, Header::VolumeReceive { name: "s1".into(), base: None });
    }

    #[test]
    fn a_cut_stream_is_host_gone() {
        let mut wire = frame(b"hello");
        wire.extend(&frame(b"world")[..6]);
        let e = copy_frames(&mut &wire[..], &mut Vec::new()).unwrap_err();
        assert!(matches!(e, DataError::HostGone("in the middle of a frame")), "{e}");
        let e = copy_frames(&mut &frame(b"x")[..], &mut Vec::new()).unwrap_err();
        assert!(matches!(e, DataError::HostGone("in the middle of the stream")), "{e}");
        let e = copy_frames(&mut &(MAX_FRAME + 1).to_be_bytes()[..], &mut Vec::new()).unwrap_err();
        assert!(matches!(e, DataError::Protocol(_)), "{e}");
        assert!(matches!(read_line(&mut &b"abc"[..]), Err(DataError::HostGone(_))));
        let long = vec![b'a'; MAX_HEADER + 2];
        assert!(matches!(read_line(&mut &long[..]), Err(DataError::Protocol(_))));
    }
}
