//! Named volumes under `ROOT/volumes/<name>/_data`, with tar backup and restore.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::apply::{self, WhiteoutMode};
use crate::diff::{self, DiffMode};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::fsutil;
use crate::source::Compression;
use crate::store::{check_name, mkdir, Store};

impl Store {
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.root.join("volumes").join(name).join("_data")
    }

    /// Create an empty volume.
    pub fn volume_create(&self, name: &str) -> Result<PathBuf> {
        check_name("volume", name)?;
        let v = self.root.join("volumes").join(name);
        if v.exists() {
            return Err(Error::new(ErrorKind::Conflict, format!("volume {name:?} already exists")));
        }
        let staging = tempfile::Builder::new()
            .prefix("volume-")
            .tempdir_in(self.root.join("tmp"))
            .ctx("create staging in", &self.root)?;
        mkdir(&staging.path().join("_data"), 0o755)?;
        std::fs::rename(staging.keep(), &v).ctx("create volume", &v)?;
        fsutil::fsync_dir(&self.root.join("volumes"))?;
        Ok(v.join("_data"))
    }

    pub fn volumes(&self) -> Result<Vec<String>> {
        let d = self.root.join("volumes");
        let mut v = Vec::new();
        for e in std::fs::read_dir(&d).ctx("read", &d)? {
            let e = e.ctx("read", &d)?;
            if e.path().join("_data").is_dir() {
                v.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        v.sort();
        Ok(v)
    }

    /// Remove a volume no container uses.
    pub fn volume_remove(&self, name: &str) -> Result<()> {
        check_name("volume", name)?;
        if !self.volume_dir(name).is_dir() {
            return Err(Error::new(ErrorKind::NotFound, format!("no such volume: {name}")));
        }
        if let Some(c) =
            self.containers()?.into_iter().find(|c| c.volumes.iter().any(|v| v == name))
        {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("volume {name} is in use by container {}", c.name),
            ));
        }
        let v = self.root.join("volumes").join(name);
        let removing = self.root.join("tmp").join(format!("volume-{name}-removing"));
        std::fs::rename(&v, &removing).ctx("rename", &v)?;
        fsutil::remove_tree(&removing)
    }

    /// Write the volume's content as a deterministic tar to `out`.
    pub fn volume_backup(&self, name: &str, out: &Path) -> Result<()> {
        check_name("volume", name)?;
        let d = self.volume_dir(name);
        if !d.is_dir() {
            return Err(Error::new(ErrorKind::NotFound, format!("no such volume: {name}")));
        }
        fsutil::replace_file(out, |f, _| diff::write_tree(&d, f, DiffMode::Plain))
    }

    /// Replace the volume's content with the tar at `input` (created if missing). The tar
    /// is extracted into staging first, so a bad archive leaves the volume as it was.
    pub fn volume_restore(&self, name: &str, input: &Path) -> Result<()> {
        check_name("volume", name)?;
        if !self.volume_dir(name).is_dir() {
            self.volume_create(name)?;
        }
        let staging = tempfile::Builder::new()
            .prefix("restore-")
            .tempdir_in(self.root.join("tmp"))
            .ctx("create staging in", &self.root)?;
        let data = staging.path().join("_data");
        mkdir(&data, 0o755)?;
        let f = File::open(input).ctx("open", input)?;
        let mut br = BufReader::new(f);
        let comp = Compression::detect(br.fill_buf().ctx("read", input)?)?;
        apply::apply_tar(comp.reader(br)?, &data, WhiteoutMode::Plain, self.limits)?;
        let cur = self.volume_dir(name);
        let old = staging.path().join("old");
        std::fs::rename(&cur, &old).ctx("rename", &cur)?;
        std::fs::rename(&data, &cur).ctx("rename", &data)?;
        fsutil::fsync_dir(cur.parent().unwrap_or(&self.root))?;
        Ok(())
    }
}
