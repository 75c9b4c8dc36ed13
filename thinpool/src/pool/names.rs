//! Volume names and sizes, kept beside the pool metadata (dm-thin stores only ids; the
//! virtual size lives in the kernel's table line, here in this table).
//!
//! The table is tied to the pool's transaction id: every table is stamped with the trans_id
//! of the commit it belongs to and made durable before that commit's superblock is written.
//! Two slots alternate, so the table of the last committed transaction is never overwritten;
//! on open the slot whose stamp equals the superblock's trans_id wins. A crash therefore never
//! leaves names and mappings disagreeing.
//!
//! ```text
//! DIR/names.a.json   {"trans_id": 7, "volumes": [{"name": "base", "id": 0, "size": 10737418240}]}
//! DIR/names.b.json   {"trans_id": 8, ...}     written, fsynced, renamed into place, dir fsynced
//! ```

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One named volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameEntry {
    pub name: String,
    pub id: u64,
    /// Virtual size in bytes.
    pub size: u64,
    /// Created for export: a daemon serving with `--exports flagged` (the appliance) offers
    /// only these to NBD clients. Absent in tables written before the flag existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub export: bool,
}

/// The whole table, stamped with the trans_id it belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameTable {
    pub trans_id: u64,
    pub volumes: Vec<NameEntry>,
}

impl NameTable {
    pub fn get(&self, name: &str) -> Option<&NameEntry> {
        self.volumes.iter().find(|v| v.name == name)
    }

    pub fn by_id(&self, id: u64) -> Option<&NameEntry> {
        self.volumes.iter().find(|v| v.id == id)
    }
}

/// Where name tables are kept.
pub trait NameStore: Send + Sync {
    /// The table stamped with `trans_id`, or `None` if no slot holds one.
    fn load(&self, trans_id: u64) -> io::Result<Option<NameTable>>;
    /// Durably stores `table` without touching the slot stamped `keep` (the committed one).
    fn store(&self, table: &NameTable, keep: u64) -> io::Result<()>;
    fn describe(&self) -> String;
}

/// Checks the name rules: non-empty, at most 128 bytes of `[A-Za-z0-9._-]`, no leading '-'.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Two JSON files in a directory.
pub struct DirNameStore {
    dir: PathBuf,
}

const SLOTS: [&str; 2] = ["names.a.json", "names.b.json"];

impl DirNameStore {
    pub fn new(dir: &Path) -> Self {
        DirNameStore { dir: dir.to_owned() }
    }

    fn read_slot(&self, slot: &str) -> io::Result<Option<NameTable>> {
        let path = self.dir.join(slot);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(t) => Ok(Some(t)),
                Err(e) => {
                    // A damaged slot is the one being written when power was cut.
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable name table");
                    Ok(None)
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }
}

impl NameStore for DirNameStore {
    fn load(&self, trans_id: u64) -> io::Result<Option<NameTable>> {
        for slot in SLOTS {
            if let Some(t) = self.read_slot(slot)? {
                if t.trans_id == trans_id {
                    return Ok(Some(t));
                }
            }
        }
        Ok(None)
    }

    fn store(&self, table: &NameTable, keep: u64) -> io::Result<()> {
        let a = self.read_slot(SLOTS[0])?;
        let slot = if a.is_some_and(|t| t.trans_id == keep) { SLOTS[1] } else { SLOTS[0] };
        let path = self.dir.join(slot);
        let tmp = self.dir.join(format!("{slot}.tmp"));
        let ctx =
            |e: io::Error, p: &Path| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
        let bytes = serde_json::to_vec_pretty(table).map_err(io::Error::other)?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| ctx(e, &tmp))?;
        f.write_all(&bytes).map_err(|e| ctx(e, &tmp))?;
        f.sync_all().map_err(|e| ctx(e, &tmp))?;
        std::fs::rename(&tmp, &path).map_err(|e| ctx(e, &path))?;
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| ctx(e, &self.dir))
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn name_rules() {
        for ok in ["a", "base-1.img", "A_b", &"x".repeat(128)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-x", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn slots_alternate_and_keep_the_committed_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = DirNameStore::new(dir.path());
        assert_eq!(s.load(0).unwrap(), None);
        let mut t = NameTable { trans_id: 1, volumes: vec![] };
        s.store(&t, 0).unwrap();
        t.trans_id = 2;
        t.volumes.push(NameEntry { name: "v".into(), id: 3, size: 4096, export: false });
        s.store(&t, 1).unwrap();
        assert_eq!(s.load(1).unwrap().unwrap().volumes.len(), 0);
        assert_eq!(s.load(2).unwrap().unwrap().volumes.len(), 1);
        t.trans_id = 3;
        s.store(&t, 2).unwrap();
        assert!(s.load(1).unwrap().is_none(), "the older slot was reused");
        assert!(s.load(2).unwrap().is_some(), "the committed slot survived");
    }
}
