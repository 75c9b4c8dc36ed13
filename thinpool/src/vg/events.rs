//! The pool's autoextend event log: an append-only file of JSON lines, one [`ExtendEvent`] per
//! line with an RFC 3339 UTC timestamp, as `thinpool events POOL` prints it. Each append is
//! one `write` on an `O_APPEND` descriptor followed by fdatasync; a line torn by a crash is
//! skipped on reading.

use super::autoextend::ExtendEvent;
use super::error::{Result, VgError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::warn;

/// An event log file.
pub struct EventLog {
    path: PathBuf,
}

impl EventLog {
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_owned() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `event` (stamping it with the current time if its `time` is empty) and makes it
    /// durable.
    pub fn append(&self, event: &ExtendEvent) -> Result<()> {
        let mut e = event.clone();
        if e.time.is_empty() {
            e.time = rfc3339(SystemTime::now());
        }
        let mut line = serde_json::to_vec(&e).map_err(|err| {
            VgError::io(format!("encoding an event for {}", self.path.display()), err.into())
        })?;
        line.push(b'\n');
        let ctx = || format!("appending to {}", self.path.display());
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|err| VgError::io(ctx(), err))?;
        f.write_all(&line).map_err(|err| VgError::io(ctx(), err))?;
        f.sync_data().map_err(|err| VgError::io(ctx(), err))
    }

    /// Every event in the log, oldest first. A missing file is an empty log.
    pub fn read(&self) -> Result<Vec<ExtendEvent>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(VgError::io(format!("reading {}", self.path.display()), e)),
        };
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            match serde_json::from_str(line) {
                Ok(e) => out.push(e),
                Err(e) => {
                    warn!(path = %self.path.display(), line = n + 1, "skipping bad event line: {e}")
                }
            }
        }
        Ok(out)
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a point in time (UTC; before 1970 prints the epoch).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (the standard era-based method:
/// 400-year eras of 146097 days, years starting in March so leap days fall last).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Bytes;
    use crate::vg::autoextend::{AutoextendInput, ExtendAction};
    use crate::vg::format::{Extents, RegionKind};
    use std::time::Duration;

    #[test]
    fn rfc3339_known_instants() {
        let at = |s| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn append_then_read_keeps_order_and_skips_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::new(&dir.path().join("events.jsonl"));
        assert!(log.read().unwrap().is_empty());
        let i = AutoextendInput {
            used: Bytes::new(90),
            size: Bytes::new(100),
            extent_size: Bytes::new(4096),
            free: Extents(1),
            threshold: 80,
            percent: 20,
        };
        let a = ExtendEvent::new(RegionKind::Data, ExtendAction::Extended, &i, Extents(1));
        let b = ExtendEvent::new(RegionKind::Metadata, ExtendAction::NoSpace, &i, Extents(3));
        let append_raw = |bytes: &[u8]| {
            let mut f = std::fs::OpenOptions::new().append(true).open(log.path()).unwrap();
            f.write_all(bytes).unwrap();
        };
        log.append(&a).unwrap();
        // A crash mid-append leaves a partial line; later appends still read back.
        append_raw(b"{\"time\":\"20");
        append_raw(b"\n");
        log.append(&b).unwrap();
        let back = log.read().unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].region, "tdata");
        assert_eq!(back[1].action, ExtendAction::NoSpace);
        assert_eq!(back[0].time.len(), 20, "{}", back[0].time);
        assert!(back[0].time.ends_with('Z'));
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(text.lines().next().unwrap().starts_with("{\"time\":\""));
    }
}
