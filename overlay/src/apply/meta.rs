//! An entry's ownership, mode, times, xattrs and sparse description from its header and
//! PAX records.

use super::*;

impl Applier {
    pub(super) fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, raw: &[u8]) -> Result<Meta> {
        let h = entry.header();
        let regular =
            matches!(h.entry_type(), tar::EntryType::Regular | tar::EntryType::Continuous);
        let bad = |what: &str, e: std::io::Error| {
            entry_err(ErrorKind::Invalid, raw, format!("bad {what} field: {e}"))
        };
        let uid = h.uid().map_err(|e| bad("uid", e))?;
        let gid = h.gid().map_err(|e| bad("gid", e))?;
        let mode = h.mode().map_err(|e| bad("mode", e))?;
        let secs = h.mtime().map_err(|e| bad("mtime", e))?;
        let mut mtime = Timespec { tv_sec: secs.min(i64::MAX as u64) as i64, tv_nsec: 0 };
        let (mut uid, mut gid) = (uid, gid);
        let mut xattrs = Vec::new();
        let mut sparse_recs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(|e| bad("pax", e))? {
            for ext in pax {
                let ext = ext.map_err(|e| bad("pax", e))?;
                let key = ext.key_bytes();
                if key.starts_with(b"GNU.sparse.") {
                    sparse_recs.push((key.to_vec(), ext.value_bytes().to_vec()));
                } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                } else if key == b"mtime" {
                    if let Some(ts) = parse_pax_time(ext.value_bytes()) {
                        mtime = ts;
                    }
                } else if key == b"uid" {
                    uid = parse_num(ext.value_bytes())
                        .ok_or_else(|| entry_err(ErrorKind::Invalid, raw, "bad pax uid"))?;
                } else if key == b"gid" {
                    gid = parse_num(ext.value_bytes())
                        .ok_or_else(|| entry_err(ErrorKind::Invalid, raw, "bad pax gid"))?;
                }
            }
        }
        let uid = u32::try_from(uid)
            .map_err(|_| entry_err(ErrorKind::Invalid, raw, "uid out of range"))?;
        let gid = u32::try_from(gid)
            .map_err(|_| entry_err(ErrorKind::Invalid, raw, "gid out of range"))?;
        let sparse = match sparse_recs.is_empty() || !regular {
            true => None,
            false => {
                sparse::from_pax(&sparse_recs).map_err(|e| entry_err(ErrorKind::Invalid, raw, e))?
            }
        };
        Ok(Meta { uid, gid, mode: mode & 0o7777, mtime, xattrs, sparse })
    }
}
