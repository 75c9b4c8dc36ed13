//! Host side of the guest agent: JSON lines over the virtio-serial chardev's Unix socket.
//! Requests carry an id; replies with another id (left from an earlier, timed-out request) are
//! skipped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent {path}: {what}")]
    Io { path: PathBuf, what: &'static str, source: std::io::Error },
    #[error("agent {path}: no reply to {command} within {waited:?}")]
    Timeout { path: PathBuf, command: String, waited: Duration },
    #[error("agent {path}: bad reply {line:?}")]
    Protocol { path: PathBuf, line: String },
    /// The guest answered with `{"error": {"code", "message"}}`.
    #[error("agent {command}: {code}: {message}")]
    Remote { command: String, code: String, message: String },
}

pub struct AgentClient {
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
}

impl AgentClient {
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, AgentError> {
        let stream = crate::connect_retrying(path, timeout).map_err(|source| AgentError::Io {
            path: path.into(),
            what: "connect",
            source,
        })?;
        let reader = BufReader::new(stream.try_clone().map_err(|source| AgentError::Io {
            path: path.into(),
            what: "clone",
            source,
        })?);
        // Start ids from the clock so a reply meant for an earlier client is never taken as ours.
        let next_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Ok(Self { path: path.into(), writer: stream, reader, next_id })
    }

    /// Sends `{"execute": command, "arguments": …}` and returns the `return` value.
    pub fn call(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, AgentError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"execute": command, "id": id});
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let io = |what| {
            let path = self.path.clone();
            move |source| AgentError::Io { path, what, source }
        };
        self.writer.write_all(format!("{msg}\n").as_bytes()).map_err(io("write"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(AgentError::Timeout {
                    path: self.path.clone(),
                    command: command.into(),
                    waited: timeout,
                });
            }
            self.reader.get_ref().set_read_timeout(Some(left)).map_err(io("set timeout"))?;
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => {
                    return Err(AgentError::Protocol {
                        path: self.path.clone(),
                        line: "(connection closed)".into(),
                    })
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(io("read")(e)),
            }
            let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
                tracing::warn!("agent: skipping non-JSON line {line:?}");
                continue;
            };
            if v.get("id").is_some_and(|i| *i != json!(id)) {
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(AgentError::Remote {
                    command: command.into(),
                    code: e["code"].as_str().unwrap_or("?").into(),
                    message: e["message"].as_str().unwrap_or("").into(),
                });
            }
            return Err(AgentError::Protocol { path: self.path.clone(), line });
        }
    }

    pub fn status(&mut self) -> Result<Value, AgentError> {
        self.call("status", None, Duration::from_secs(10))
    }

    /// Runs `argv` in the guest (needs `lamina.debug=1`); returns {exit_code, stdout, stderr, …}.
    pub fn exec(&mut self, argv: &[&str], timeout: Duration) -> Result<Value, AgentError> {
        let args = json!({"argv": argv, "timeout_secs": timeout.as_secs().max(1)});
        self.call("exec", Some(args), timeout + Duration::from_secs(10))
    }

    pub fn shutdown(&mut self) -> Result<Value, AgentError> {
        self.call("shutdown", None, Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{next_request, FakePeer};

    #[test]
    fn skips_stale_replies_and_maps_errors() {
        let peer = FakePeer::spawn("agent.sock", |mut r, mut w| {
            let m = next_request(&mut r).unwrap();
            writeln!(w, "{}", json!({"return": "stale", "id": 1})).unwrap();
            writeln!(w, "{}", json!({"return": {"ready": true}, "id": m["id"]})).unwrap();
            let m = next_request(&mut r).unwrap();
            writeln!(
                w,
                "{}",
                json!({"error": {"code": "forbidden", "message": "debug only"}, "id": m["id"]})
            )
            .unwrap();
        });
        let mut c = AgentClient::connect(&peer.sock, Duration::from_secs(5)).unwrap();
        assert_eq!(c.status().unwrap()["ready"], true);
        let e = c.exec(&["true"], Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(e, AgentError::Remote { ref code, .. } if code == "forbidden"),
            "{}",
            units::chain(&e)
        );
        peer.join();
    }
}
