//! Byte images and thin_dump XML for the engine tests.
#![allow(clippy::unwrap_used)]

use std::path::Path;

/// Writes a byte image to a temporary file (for running the tools on a MemDevice's bytes).
pub fn image_file(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// `name="value"` attribute of an XML line.
pub fn attr(line: &str, name: &str) -> Option<u64> {
    let key = format!(" {name}=\"");
    let start = line.find(&key)? + key.len();
    let end = line[start..].find('"')? + start;
    line[start..end].parse().ok()
}

/// Mappings per device from thin_dump XML: dev_id -> [(virt, data, time)], ranges expanded.
pub fn dump_mappings(xml: &str) -> std::collections::BTreeMap<u64, Vec<(u64, u64, u64)>> {
    let mut out = std::collections::BTreeMap::new();
    let mut dev = None;
    for line in xml.lines() {
        let l = line.trim();
        if l.starts_with("<device ") {
            dev = attr(l, "dev_id");
            out.insert(dev.unwrap(), Vec::new());
        } else if l.starts_with("<single_mapping ") {
            let m = (
                attr(l, "origin_block").unwrap(),
                attr(l, "data_block").unwrap(),
                attr(l, "time").unwrap(),
            );
            out.get_mut(&dev.unwrap()).unwrap().push(m);
        } else if l.starts_with("<range_mapping ") {
            let (o, d, n, t) = (
                attr(l, "origin_begin").unwrap(),
                attr(l, "data_begin").unwrap(),
                attr(l, "length").unwrap(),
                attr(l, "time").unwrap(),
            );
            let v = out.get_mut(&dev.unwrap()).unwrap();
            for i in 0..n {
                v.push((o + i, d + i, t));
            }
        }
    }
    out
}
