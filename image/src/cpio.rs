//! A reproducible cpio "newc" codec: what the kernel unpacks as the initramfs.
//!
//! ```text
//! per entry:  "070701" | 13 × 8 hex digits | name + NUL, padded to 4 | data, padded to 4
//!             ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
//!             namesize check
//! archive:    entries … | entry "TRAILER!!!" (all fields 0 except nlink 1, namesize 11)
//! ```
//!
//! Reproducibility is a property of the *writer input*, not of the host: [`Archive`] keeps entries
//! sorted by path, adds missing parent directories, and [`Archive::encode`] numbers inodes in that
//! order, with uid/gid 0, one fixed mtime and no host device numbers. Same entries → same bytes.

use std::collections::BTreeMap;

use thiserror::Error;

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFMT: u32 = 0o170000;

/// What one archive entry is. Permission bits live in [`Entry::perm`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

/// One archive member: a path relative to the archive root (no leading `/`), type and permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub perm: u32,
    pub kind: Kind,
}

impl Entry {
    pub fn mode(&self) -> u32 {
        let ty = match self.kind {
            Kind::Dir => S_IFDIR,
            Kind::File(_) => S_IFREG,
            Kind::Symlink(_) => S_IFLNK,
            Kind::CharDev { .. } => S_IFCHR,
        };
        ty | (self.perm & 0o7777)
    }

    fn data(&self) -> &[u8] {
        match &self.kind {
            Kind::File(d) => d,
            Kind::Symlink(t) => t.as_bytes(),
            Kind::Dir | Kind::CharDev { .. } => &[],
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CpioError {
    #[error("cpio: invalid path {path:?}: {why}")]
    BadPath { path: String, why: &'static str },
    #[error("cpio: {path:?} added twice with different contents")]
    Conflict { path: String },
    #[error("cpio: truncated archive at offset {offset} while reading {what}")]
    Truncated { offset: usize, what: &'static str },
    #[error("cpio: bad header at offset {offset}: {why}")]
    BadHeader { offset: usize, why: &'static str },
}

/// A sorted, deduplicated set of entries; the writer side of the codec.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
    mtime: u32,
}

impl Archive {
    /// `mtime` is stamped on every entry (SOURCE_DATE_EPOCH style; 0 is fine for an initramfs).
    pub fn new(mtime: u32) -> Self {
        Self { entries: BTreeMap::new(), mtime }
    }

    /// Adds an entry and any missing parent directories (mode 0755). Adding the same entry twice
    /// is a no-op; adding a different one under the same path is an error.
    pub fn add(&mut self, entry: Entry) -> Result<(), CpioError> {
        check_path(&entry.path)?;
        let mut parent = String::new();
        for comp in entry.path.split('/').collect::<Vec<_>>().iter().rev().skip(1).rev() {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            match self.entries.get(&parent) {
                Some(e) if e.kind != Kind::Dir => {
                    return Err(CpioError::Conflict { path: parent });
                }
                Some(_) => {}
                None => {
                    self.entries.insert(
                        parent.clone(),
                        Entry { path: parent.clone(), perm: 0o755, kind: Kind::Dir },
                    );
                }
            }
        }
        match self.entries.get(&entry.path) {
            Some(old) if *old == entry => Ok(()),
            // An implicit parent dir may be re-declared with other permissions.
            Some(old) if old.kind == Kind::Dir && entry.kind == Kind::Dir => {
                self.entries.insert(entry.path.clone(), entry);
                Ok(())
            }
            Some(_) => Err(CpioError::Conflict { path: entry.path }),
            None => {
                self.entries.insert(entry.path.clone(), entry);
                Ok(())
            }
        }
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Encodes the archive: entries in path order (parents sort before children), inode numbers
    /// 1.. in that order, then the trailer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, e) in self.entries.values().enumerate() {
            let (rmaj, rmin) = match e.kind {
                Kind::CharDev { major, minor } => (major, minor),
                _ => (0, 0),
            };
            let nlink = if e.kind == Kind::Dir { 2 } else { 1 };
            let h = Header {
                ino: i as u32 + 1,
                mode: e.mode(),
                nlink,
                mtime: self.mtime,
                filesize: e.data().len() as u32,
                rdevmajor: rmaj,
                rdevminor: rmin,
            };
            write_member(&mut out, &h, &e.path, e.data());
        }
        let t =
            Header { ino: 0, mode: 0, nlink: 1, mtime: 0, filesize: 0, rdevmajor: 0, rdevminor: 0 };
        write_member(&mut out, &t, TRAILER, &[]);
        out
    }

    /// One line per entry: `mode path size` (+ `-> target` / `major:minor`), for snapshot tests.
    pub fn listing(&self) -> String {
        let mut s = String::new();
        for e in self.entries.values() {
            let extra = match &e.kind {
                Kind::Symlink(t) => format!(" -> {t}"),
                Kind::CharDev { major, minor } => format!(" {major}:{minor}"),
                _ => String::new(),
            };
            s.push_str(&format!("{:06o} {:>10} {}{}\n", e.mode(), e.data().len(), e.path, extra));
        }
        s
    }
}

fn check_path(path: &str) -> Result<(), CpioError> {
    let bad = |why| Err(CpioError::BadPath { path: path.to_owned(), why });
    if path.is_empty() {
        return bad("empty");
    }
    if path.starts_with('/') || path.ends_with('/') {
        return bad("leading or trailing slash");
    }
    if path.contains('\0') {
        return bad("NUL byte");
    }
    if path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return bad("empty, . or .. component");
    }
    if path == TRAILER {
        return bad("reserved name");
    }
    Ok(())
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rdevmajor: u32,
    rdevminor: u32,
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() & 3 != 0 {
        out.push(0);
    }
}

fn write_member(out: &mut Vec<u8>, h: &Header, name: &str, data: &[u8]) {
    out.extend_from_slice(MAGIC);
    let namesize = name.len() as u32 + 1;
    // uid, gid, devmajor, devminor and check are always 0.
    for v in [
        h.ino,
        h.mode,
        0,
        0,
        h.nlink,
        h.mtime,
        h.filesize,
        0,
        0,
        h.rdevmajor,
        h.rdevminor,
        namesize,
        0,
    ] {
        out.extend_from_slice(format!("{v:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

/// Decodes an archive produced by any newc writer (used to check ours). Stops at the trailer.
pub fn decode(bytes: &[u8]) -> Result<Vec<Entry>, CpioError> {
    let mut off = 0usize;
    let mut out = Vec::new();
    loop {
        let hdr = bytes
            .get(off..off + HEADER_LEN)
            .ok_or(CpioError::Truncated { offset: off, what: "header" })?;
        if &hdr[..6] != MAGIC {
            return Err(CpioError::BadHeader { offset: off, why: "magic is not 070701" });
        }
        let field = |i: usize| -> Result<u32, CpioError> {
            let s = std::str::from_utf8(&hdr[6 + i * 8..14 + i * 8])
                .map_err(|_| CpioError::BadHeader { offset: off, why: "non-ASCII field" })?;
            u32::from_str_radix(s, 16)
                .map_err(|_| CpioError::BadHeader { offset: off, why: "non-hex field" })
        };
        let mode = field(1)?;
        let filesize = field(6)? as usize;
        let (rmaj, rmin) = (field(9)?, field(10)?);
        let namesize = field(11)? as usize;
        if namesize == 0 {
            return Err(CpioError::BadHeader { offset: off, why: "namesize 0" });
        }
        let name_start = off + HEADER_LEN;
        let name = bytes
            .get(name_start..name_start + namesize)
            .ok_or(CpioError::Truncated { offset: name_start, what: "name" })?;
        if name[namesize - 1] != 0 {
            return Err(CpioError::BadHeader { offset: off, why: "name not NUL-terminated" });
        }
        let name = std::str::from_utf8(&name[..namesize - 1])
            .map_err(|_| CpioError::BadHeader { offset: off, why: "name is not UTF-8" })?
            .to_owned();
        let data_start = (name_start + namesize).next_multiple_of(4);
        if name == TRAILER {
            return Ok(out);
        }
        let data = bytes
            .get(data_start..data_start + filesize)
            .ok_or(CpioError::Truncated { offset: data_start, what: "data" })?;
        let kind = match mode & S_IFMT {
            S_IFDIR => Kind::Dir,
            S_IFREG => Kind::File(data.to_vec()),
            S_IFLNK => Kind::Symlink(
                String::from_utf8(data.to_vec())
                    .map_err(|_| CpioError::BadHeader { offset: off, why: "symlink not UTF-8" })?,
            ),
            S_IFCHR => Kind::CharDev { major: rmaj, minor: rmin },
            _ => return Err(CpioError::BadHeader { offset: off, why: "unsupported file type" }),
        };
        out.push(Entry { path: name, perm: mode & 0o7777, kind });
        off = (data_start + filesize).next_multiple_of(4);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn file(path: &str, data: &[u8]) -> Entry {
        Entry { path: path.into(), perm: 0o644, kind: Kind::File(data.to_vec()) }
    }

    #[test]
    fn rt_archive_with_every_kind() {
        let mut a = Archive::new(0);
        a.add(file("etc/lamina/config.toml", b"debug = false\n")).unwrap();
        a.add(Entry { path: "init".into(), perm: 0o755, kind: Kind::File(vec![0x7f, b'E']) })
            .unwrap();
        a.add(Entry { path: "lib64".into(), perm: 0o777, kind: Kind::Symlink("lib".into()) })
            .unwrap();
        a.add(Entry {
            path: "dev/console".into(),
            perm: 0o600,
            kind: Kind::CharDev { major: 5, minor: 1 },
        })
        .unwrap();
        let bytes = a.encode();
        assert_eq!(bytes.len() % 4, 0);
        let back = decode(&bytes).unwrap();
        let paths: Vec<_> = back.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["dev", "dev/console", "etc", "etc/lamina", "etc/lamina/config.toml", "init", "lib64"]
        );
        assert_eq!(back, a.entries().cloned().collect::<Vec<_>>());
    }

    #[test]
    fn header_fields_are_fixed() {
        let mut a = Archive::new(7);
        a.add(file("a", b"xyz")).unwrap();
        let b = a.encode();
        // ino 1, mode 0100644, uid 0, gid 0, nlink 1, mtime 7, size 3, devices 0, namesize 2.
        let want = concat!(
            "070701", "00000001", "000081a4", "00000000", "00000000", "00000001", "00000007",
            "00000003", "00000000", "00000000", "00000000", "00000000", "00000002", "00000000"
        );
        assert_eq!(std::str::from_utf8(&b[..HEADER_LEN]).unwrap(), want);
        // Name ends at 112 (aligned), data pads to 116, then the trailer.
        assert_eq!(&b[HEADER_LEN..HEADER_LEN + 2], b"a\0");
        assert_eq!(&b[HEADER_LEN + 2..HEADER_LEN + 6], b"xyz\0");
        assert_eq!(&b[HEADER_LEN + 6..HEADER_LEN + 12], b"070701");
    }

    #[test]
    fn same_entries_in_any_order_encode_identically() {
        let mut a = Archive::new(0);
        let mut b = Archive::new(0);
        for p in ["x/y", "a", "x/b"] {
            a.add(file(p, p.as_bytes())).unwrap();
        }
        for p in ["x/b", "x/y", "a"] {
            b.add(file(p, p.as_bytes())).unwrap();
        }
        assert_eq!(a.encode(), b.encode());
    }

    #[test]
    fn rejects_bad_paths_and_conflicts() {
        let mut a = Archive::new(0);
        for p in ["/abs", "a/../b", "", "a//b", "trail/"] {
            assert!(matches!(a.add(file(p, b"")), Err(CpioError::BadPath { .. })), "{p}");
        }
        a.add(file("f", b"1")).unwrap();
        a.add(file("f", b"1")).unwrap();
        assert_eq!(a.add(file("f", b"2")), Err(CpioError::Conflict { path: "f".into() }));
        assert!(matches!(a.add(file("f/g", b"")), Err(CpioError::Conflict { .. })));
    }

    #[test]
    fn decode_rejects_garbage_without_panicking() {
        assert_eq!(decode(b""), Err(CpioError::Truncated { offset: 0, what: "header" }));
        assert_eq!(decode(b"070701"), Err(CpioError::Truncated { offset: 0, what: "header" }));
        let mut crc_format = b"070702".to_vec();
        crc_format.resize(110, b'0');
        let magic = CpioError::BadHeader { offset: 0, why: "magic is not 070701" };
        assert_eq!(decode(&crc_format), Err(magic));
        let mut a = Archive::new(0);
        a.add(file("abc", b"hello")).unwrap();
        let b = a.encode();
        for cut in 0..b.len() - 1 {
            let _ = decode(&b[..cut]);
        }
    }

    proptest! {
        #[test]
        fn rt_arbitrary_files(files in proptest::collection::btree_map("[a-z]{1,8}(/[a-z]{1,8}){0,2}", proptest::collection::vec(any::<u8>(), 0..64), 0..12)) {
            let mut a = Archive::new(0);
            let mut ok = Vec::new();
            for (p, d) in &files {
                if a.add(file(p, d)).is_ok() { ok.push(p.clone()); }
            }
            let back = decode(&a.encode()).unwrap();
            prop_assert_eq!(back, a.entries().cloned().collect::<Vec<_>>());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(&bytes);
        }
    }
}
