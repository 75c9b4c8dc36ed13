//! The serial console log that QEMU writes, and waiting for a line in it with a deadline
//! (inotify wakes us on every write; no blind sleeps).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::inotify;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console {path}: watching")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("console {path}: none of {wanted:?} within {waited:?}; last lines:\n{tail}")]
    Timeout { path: PathBuf, wanted: Vec<String>, waited: Duration, tail: String },
    #[error(
        "console {path}: the VM stopped before any of {wanted:?} appeared; last lines:\n{tail}"
    )]
    Stopped { path: PathBuf, wanted: Vec<String>, tail: String },
}

/// A log file that grows while the VM runs.
pub struct ConsoleLog {
    path: PathBuf,
    inotify: OwnedFd,
}

/// The line that matched, which needle it matched, and when it was seen.
#[derive(Debug, Clone)]
pub struct Match {
    pub needle: usize,
    pub line: String,
    pub at: Instant,
}

impl ConsoleLog {
    /// Watches `path` (created empty if missing, so the watch exists before QEMU writes).
    pub fn open(path: &Path) -> Result<Self, ConsoleError> {
        let io = |source: std::io::Error| ConsoleError::Io { path: path.to_owned(), source };
        if !path.exists() {
            std::fs::write(path, b"").map_err(io)?;
        }
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .map_err(|e| io(e.into()))?;
        inotify::add_watch(&fd, path, inotify::WatchFlags::MODIFY).map_err(|e| io(e.into()))?;
        Ok(Self { path: path.to_owned(), inotify: fd })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn text(&self) -> String {
        std::fs::read(&self.path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        let t = self.text();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until a complete line containing one of `needles` is in the log. `alive` is asked
    /// on every wake-up (and at least every 200 ms); when it says the VM is gone the wait fails.
    pub fn wait_for(
        &self,
        needles: &[&str],
        timeout: Duration,
        alive: &mut dyn FnMut() -> bool,
    ) -> Result<Match, ConsoleError> {
        let start = Instant::now();
        let deadline = start + timeout;
        let wanted = || needles.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        loop {
            let text = self.text();
            // Only complete lines count (a line is complete once its newline arrived).
            let complete = match text.rfind('\n') {
                Some(i) => &text[..i],
                None => "",
            };
            for line in complete.lines() {
                if let Some(i) = needles.iter().position(|n| line.contains(n)) {
                    return Ok(Match {
                        needle: i,
                        line: line.trim_end_matches('\r').to_owned(),
                        at: Instant::now(),
                    });
                }
            }
            if !alive() {
                // One more look: the VM may have written the line just before stopping.
                let text = self.text();
                if let Some((i, line)) = text
                    .lines()
                    .find_map(|l| needles.iter().position(|n| l.contains(n)).map(|i| (i, l)))
                {
                    return Ok(Match { needle: i, line: line.to_owned(), at: Instant::now() });
                }
                return Err(ConsoleError::Stopped {
                    path: self.path.clone(),
                    wanted: wanted(),
                    tail: self.tail(30),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ConsoleError::Timeout {
                    path: self.path.clone(),
                    wanted: wanted(),
                    waited: timeout,
                    tail: self.tail(30),
                });
            }
            let wait = (deadline - now).min(Duration::from_millis(200));
            let mut fds = [rustix::event::PollFd::new(&self.inotify, rustix::event::PollFlags::IN)];
            let ts = rustix::event::Timespec {
                tv_sec: wait.as_secs() as i64,
                tv_nsec: wait.subsec_nanos() as i64,
            };
            let _ = rustix::event::poll(&mut fds, Some(&ts));
            let mut buf = [0u8; 4096];
            while rustix::io::read(&self.inotify, &mut buf).is_ok_and(|n| n > 0) {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn wakes_on_write_and_matches_complete_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console.log");
        let log = ConsoleLog::open(&p).unwrap();
        let p2 = p.clone();
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().append(true).open(&p2).unwrap();
            f.write_all(b"boot...\nlamina: LAMINA RE").unwrap();
            std::thread::sleep(Duration::from_millis(100));
            f.write_all(b"ADY: ok\n").unwrap();
        });
        let m = log
            .wait_for(&["LAMINA DEGRADED", "LAMINA READY"], Duration::from_secs(10), &mut || true)
            .unwrap();
        writer.join().unwrap();
        assert_eq!(m.needle, 1);
        assert_eq!(m.line, "lamina: LAMINA READY: ok");
    }

    #[test]
    fn times_out_and_reports_the_tail() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        std::fs::write(&p, "one\ntwo\n").unwrap();
        let log = ConsoleLog::open(&p).unwrap();
        let e = log.wait_for(&["never"], Duration::from_millis(300), &mut || true).unwrap_err();
        assert!(
            matches!(&e, ConsoleError::Timeout { tail, .. } if tail == "one\ntwo"),
            "{}",
            units::chain(&e)
        );
        let e = log.wait_for(&["never"], Duration::from_secs(30), &mut || false).unwrap_err();
        assert!(matches!(e, ConsoleError::Stopped { .. }));
    }
}
