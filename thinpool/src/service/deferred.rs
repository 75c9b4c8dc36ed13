//! Deferred deletion (`dm.use_deferred_deletion`): a volume removed while open is deleted
//! when its last handle closes; the list survives restarts in `DIR/deferred.json`, and the
//! next start finishes what is left, as Docker's deletion worker does at startup.

use std::path::PathBuf;

use tracing::{error, info, warn};

use super::{lock, Error, ErrorKind, Result, Shared, Volumes};

impl Shared {
    /// Deletes a volume and commits, then wakes writers waiting for space.
    pub(super) fn delete_now(&self, name: &str) -> Result<()> {
        let _g = self.writable()?;
        let doing = format!("removing volume {name:?}");
        self.pool().remove_volume(name).map_err(|e| Error::pool(&doing, e))?;
        self.pool().commit().map_err(|e| Error::pool(&doing, e))?;
        drop(_g);
        self.notify_space();
        Ok(())
    }

    /// The last handle on `name` closed.
    pub(crate) fn release(&self, name: &str) {
        let mut v = lock(&self.vols);
        let Some(e) = v.open.get_mut(name) else { return };
        e.1 = e.1.saturating_sub(1);
        if e.1 > 0 {
            return;
        }
        v.open.remove(name);
        if !v.deferred.contains(name) {
            return;
        }
        match self.delete_now(name) {
            Ok(()) => {
                v.deferred.remove(name);
                info!(volume = name, "deferred deletion done");
                if let Err(e) = self.save_deferred(&v) {
                    warn!(error = %units::chain(&e), "could not update the deferred deletion list");
                }
            }
            // Stays in the list: retried at the next start, as Docker's worker does.
            Err(e) => error!(volume = name, error = %units::chain(&e), "deferred deletion failed"),
        }
    }

    pub(super) fn deferred_path(&self) -> Option<PathBuf> {
        self.state_dir.as_ref().map(|d| d.join("deferred.json"))
    }

    pub(super) fn save_deferred(&self, v: &Volumes) -> Result<()> {
        let Some(p) = self.deferred_path() else { return Ok(()) };
        let list: Vec<&String> = v.deferred.iter().collect();
        let text = serde_json::to_vec(&list)
            .map_err(|e| Error::io(format!("encoding {}", p.display()), e.into()))?;
        let tmp = p.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut &f, &text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &p)
        };
        write().map_err(|e| Error::io(format!("writing {}", p.display()), e))
    }

    /// Deletes what a previous run left in the deferred list.
    pub(super) fn finish_deferred(&self) -> Result<()> {
        let Some(p) = self.deferred_path() else { return Ok(()) };
        let names: Vec<String> = match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                warn!(path = %p.display(), "ignoring an unreadable deferred list: {e}");
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("reading {}", p.display()), e)),
        };
        let mut v = lock(&self.vols);
        for n in names {
            if self.pool().volume(&n).is_err() {
                continue;
            }
            match self.delete_now(&n) {
                Ok(()) => info!(volume = %n, "finished a deferred deletion"),
                Err(e) => {
                    warn!(volume = %n, error = %units::chain(&e), "deferred deletion still pending");
                    v.deferred.insert(n);
                }
            }
        }
        self.save_deferred(&v)
    }
}

/// A new volume may not take the name of one still waiting for deferred deletion.
pub(super) fn refuse_deferred(v: &Volumes, name: &str) -> Result<()> {
    if v.deferred.contains(name) {
        return Err(Error::new(
            ErrorKind::Exists,
            format!("volume {name:?} is still being removed (deferred deletion)"),
        ));
    }
    Ok(())
}
