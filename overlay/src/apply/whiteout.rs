//! Whiteouts and opaque directories (OCI image-spec layer.md), per [`WhiteoutMode`].

use super::*;

impl Applier {
    pub(super) fn whiteout(
        &mut self,
        raw: &[u8],
        path: &Path,
        name: &[u8],
        meta: &Meta,
    ) -> Result<()> {
        let parent_rel = path.parent().unwrap_or(Path::new("")).to_path_buf();
        if name == WH_OPAQUE {
            let parent = self.parent(raw, &parent_rel)?;
            match self.mode {
                WhiteoutMode::Overlay => {
                    rustix::fs::fsetxattr(&parent, OPAQUE_XATTR, b"y", XattrFlags::empty())
                        .map_err(|e| entry_io(raw, "set opaque xattr", e))?;
                }
                WhiteoutMode::Vfs => self.clear_lower(raw, &parent, &parent_rel)?,
                WhiteoutMode::Plain => unreachable!("plain mode never converts"),
            }
            return Ok(());
        }
        let target = &name[WH_PREFIX.len()..];
        if target.is_empty() || target == b"." || target == b".." || target.starts_with(WH_PREFIX) {
            return Err(entry_err(ErrorKind::Invalid, raw, "invalid whiteout name"));
        }
        let target = OsStr::from_bytes(target);
        let target_path = parent_rel.join(target);
        if self.written.contains(&target_path) {
            // Whiteouts hide lower layers only; this layer's own entry stays.
            return Ok(());
        }
        let parent = self.parent(raw, &parent_rel)?;
        match self.mode {
            WhiteoutMode::Overlay => {
                if let Ok(st) = rustix::fs::statat(&parent, target, AtFlags::SYMLINK_NOFOLLOW) {
                    self.forget_size(&target_path, &st);
                }
                match fsutil::remove_at(&parent, target) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => return Err(entry_io(raw, "remove whited-out entry", e)),
                }
                rustix::fs::mknodat(
                    &parent,
                    target,
                    FileType::CharacterDevice,
                    Mode::from_raw_mode(0o600),
                    0,
                )
                .map_err(|e| entry_io(raw, "mknod whiteout", e))?;
                rustix::fs::chownat(
                    &parent,
                    target,
                    Some(rustix::fs::Uid::from_raw(meta.uid)),
                    Some(rustix::fs::Gid::from_raw(meta.gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| entry_io(raw, "chown whiteout", e))?;
            }
            WhiteoutMode::Vfs => match fsutil::remove_at(&parent, target) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(entry_io(raw, "remove whited-out entry", e)),
            },
            WhiteoutMode::Plain => unreachable!("plain mode never converts"),
        }
        self.cached_parent = None;
        Ok(())
    }

    /// vfs opaque directory: drop everything below `dir` that this layer did not write.
    fn clear_lower(&mut self, raw: &[u8], dir: &OwnedFd, rel: &Path) -> Result<()> {
        let names = fsutil::list_dir(dir).map_err(|e| entry_io(raw, "list opaque directory", e))?;
        for n in names {
            let child = rel.join(&n);
            if !self.written.contains(&child) {
                fsutil::remove_at(dir, &n)
                    .map_err(|e| entry_io(raw, "clear opaque directory", e))?;
            } else if let Ok(sub) = rustix::fs::openat(
                dir,
                &n,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                self.clear_lower(raw, &sub, &child)?;
            }
        }
        self.cached_parent = None;
        Ok(())
    }
}
