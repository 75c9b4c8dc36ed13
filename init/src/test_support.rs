//! Shared setup for the unit tests.

use std::path::Path;

/// Writes a ustar archive of `(name, contents)` entries, each with `mode`: a config disk as
/// the host packs one.
pub(crate) fn ustar<N, D>(path: &Path, mode: u32, entries: impl IntoIterator<Item = (N, D)>)
where
    N: AsRef<Path>,
    D: AsRef<[u8]>,
{
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in entries {
        let data = data.as_ref();
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    }
    b.finish().unwrap();
}
