//! A small synchronous QMP client: greeting, `qmp_capabilities`, commands correlated by id,
//! asynchronous events collected on the side.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP {path}: {what}")]
    Io { path: PathBuf, what: &'static str, source: std::io::Error },
    #[error("QMP {path}: {what}")]
    Protocol { path: PathBuf, what: String },
    #[error("QMP {command}: {class}: {desc}")]
    Command { command: String, class: String, desc: String },
    #[error("QMP {path}: connection closed")]
    Closed { path: PathBuf },
    #[error("QMP {path}: no {what} within {waited:?}")]
    Timeout { path: PathBuf, what: String, waited: Duration },
}

pub struct Qmp {
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
    /// Events received so far (`{"event": …, "data": …, "timestamp": …}`).
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects (retrying until `timeout` while QEMU creates the socket) and negotiates.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let io = |what| move |source| QmpError::Io { path: path.into(), what, source };
        let stream = crate::connect_retrying(path, timeout).map_err(io("connect"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(io("set timeout"))?;
        let reader = BufReader::new(stream.try_clone().map_err(io("clone"))?);
        let mut q =
            Self { path: path.into(), writer: stream, reader, next_id: 1, events: Vec::new() };
        let greeting = q.read_msg()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol {
                path: path.into(),
                what: format!("no greeting: {greeting}"),
            });
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn read_msg(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(|source| QmpError::Io {
            path: self.path.clone(),
            what: "read",
            source,
        })?;
        if n == 0 {
            return Err(QmpError::Closed { path: self.path.clone() });
        }
        serde_json::from_str(&line).map_err(|e| QmpError::Protocol {
            path: self.path.clone(),
            what: format!("bad JSON {line:?}: {e}"),
        })
    }

    /// Runs a command and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"execute": command, "id": id});
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        // A wait_* call may have left a short read timeout behind.
        self.reader.get_ref().set_read_timeout(Some(Duration::from_secs(10))).ok();
        self.writer.write_all(line.as_bytes()).map_err(|source| QmpError::Io {
            path: self.path.clone(),
            what: "write",
            source,
        })?;
        loop {
            let m = self.read_msg()?;
            if m.get("event").is_some() {
                self.events.push(m);
                continue;
            }
            if m.get("id") != Some(&json!(id)) {
                continue;
            }
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            let err = m.get("error").cloned().unwrap_or(Value::Null);
            return Err(QmpError::Command {
                command: command.into(),
                class: err["class"].as_str().unwrap_or("?").into(),
                desc: err["desc"].as_str().unwrap_or("?").into(),
            });
        }
    }

    /// Waits for an event named `name` (already received ones count).
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Value, QmpError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events.iter().find(|e| e["event"] == name) {
                return Ok(e.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QmpError::Timeout {
                    path: self.path.clone(),
                    what: format!("event {name}"),
                    waited: timeout,
                });
            }
            self.reader.get_ref().set_read_timeout(Some(left)).ok();
            match self.read_msg() {
                Ok(m) if m.get("event").is_some() => self.events.push(m),
                Ok(_) => {}
                Err(QmpError::Io { source, .. })
                    if matches!(
                        source.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads events until QEMU closes the socket (it exited) or `timeout` passes; true if closed.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.reader.get_ref().set_read_timeout(Some(left)).ok();
            match self.read_msg() {
                Ok(m) => {
                    if m.get("event").is_some() {
                        self.events.push(m);
                    }
                }
                Err(QmpError::Closed { .. }) => return true,
                Err(QmpError::Io { source, .. })
                    if matches!(
                        source.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true, // reset by peer: gone
            }
        }
    }

    /// `system_powerdown`: the ACPI power button.
    pub fn powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).map(drop)
    }

    pub fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None) {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `query-status` → e.g. "running".
    pub fn status(&mut self) -> Result<String, QmpError> {
        Ok(self.execute("query-status", None)?["status"].as_str().unwrap_or("?").to_owned())
    }

    /// Hot-plugs a raw image as virtio-blk (q35: on root port `bus`, e.g. "rp1").
    pub fn hotplug_disk(
        &mut self,
        id: &str,
        path: &Path,
        bus: Option<&str>,
    ) -> Result<(), QmpError> {
        let node = format!("{id}-node");
        self.execute(
            "blockdev-add",
            Some(json!({"node-name": node, "driver": "raw", "file": {"driver": "file", "filename": path.display().to_string()}})),
        )?;
        let mut dev = json!({"driver": "virtio-blk-pci", "id": id, "drive": node});
        if let Some(b) = bus {
            dev["bus"] = json!(b);
        }
        self.execute("device_add", Some(dev)).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{next_request, FakePeer};

    /// A fake QEMU that greets, answers by id and emits an event before the reply.
    #[test]
    fn negotiates_correlates_ids_and_keeps_events() {
        let peer = FakePeer::spawn("qmp.sock", |mut r, mut w| {
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            while let Some(m) = next_request(&mut r) {
                let id = m["id"].clone();
                match m["execute"].as_str().unwrap() {
                    "system_powerdown" => {
                        writeln!(w, r#"{{"event": "POWERDOWN", "data": {{}}, "timestamp": {{}}}}"#)
                            .unwrap();
                        writeln!(w, "{}", json!({"return": {}, "id": id})).unwrap();
                        writeln!(w, r#"{{"event": "SHUTDOWN", "data": {{"guest": true, "reason": "guest-shutdown"}}}}"#).unwrap();
                        return; // "QEMU exits"
                    }
                    "query-status" => {
                        writeln!(w, "{}", json!({"return": {"status": "running"}, "id": id}))
                            .unwrap()
                    }
                    "bad" => writeln!(
                        w,
                        "{}",
                        json!({"error": {"class": "CommandNotFound", "desc": "nope"}, "id": id})
                    )
                    .unwrap(),
                    _ => writeln!(w, "{}", json!({"return": {}, "id": id})).unwrap(),
                }
            }
        });
        let mut q = Qmp::connect(&peer.sock, Duration::from_secs(5)).unwrap();
        assert_eq!(q.status().unwrap(), "running");
        assert!(
            matches!(q.execute("bad", None), Err(QmpError::Command { class, .. }) if class == "CommandNotFound")
        );
        q.powerdown().unwrap();
        assert_eq!(q.events[0]["event"], "POWERDOWN");
        assert_eq!(
            q.wait_event("SHUTDOWN", Duration::from_secs(5)).unwrap()["data"]["reason"],
            "guest-shutdown"
        );
        assert!(q.wait_closed(Duration::from_secs(5)));
        peer.join();
    }
}
