//! Unit tests of tar application.

use super::*;

#[test]
fn clean_path_rules() {
    assert_eq!(clean_path(b"./a/b").unwrap(), PathBuf::from("a/b"));
    assert_eq!(clean_path(b"a/./b/").unwrap(), PathBuf::from("a/b"));
    assert_eq!(clean_path(b"./").unwrap(), PathBuf::new());
    assert_eq!(clean_path(b"../x"), Err("`..` component"));
    assert_eq!(clean_path(b"a/../../x"), Err("`..` component"));
    assert_eq!(clean_path(b"/etc/passwd"), Err("absolute path"));
    assert_eq!(clean_path(b"a\0b"), Err("NUL byte in path"));
}

#[test]
fn pad_tail_completes_records() {
    let mut out = Vec::new();
    PadTail::new(&[1u8; 700][..]).read_to_end(&mut out).unwrap();
    assert_eq!(out.len(), 1024 + 1024);
    assert!(out[700..].iter().all(|b| *b == 0));
    let mut out = Vec::new();
    PadTail::new(&[1u8; 1024][..]).read_to_end(&mut out).unwrap();
    assert_eq!(out.len(), 2048);
}

/// One tar entry of the generated layers: (kind, path index, size or link target index).
fn layer_tar(ops: &[(u8, u8, u16)]) -> Vec<u8> {
    let names = ["a", "b", "d/x", "d/y", "d", "e/f/g", ".wh.a", "d/.wh.x", "e"];
    let mut b = tar::Builder::new(Vec::new());
    for &(kind, p, n) in ops {
        let path = names[p as usize % names.len()];
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(1_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match kind % 4 {
            0 | 1 => {
                let data = vec![7u8; n as usize];
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, &data[..]).unwrap();
            }
            2 => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
            _ => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                let target = names[n as usize % 6];
                b.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// The running size equals a walk of the result, whatever the entries replace.
    #[test]
    fn counted_size_matches_a_walk(
        ops in proptest::collection::vec((0u8..4, 0u8..9, 0u16..3000), 1..24)
    ) {
        let tar = layer_tar(&ops);
        let d = tempfile::tempdir().unwrap();
        // Entries may be rejected (hardlink to a missing target, dir over file…): only
        // successful applications are compared.
        if let Ok(stats) = apply_tar(&tar[..], d.path(), WhiteoutMode::Overlay, Limits::default()) {
            let walked = fsutil::tree_size(d.path()).unwrap();
            if let Some(counted) = stats.file_bytes {
                proptest::prop_assert_eq!(counted, walked);
            }
        }
    }
}

#[test]
fn counted_size_covers_replacements_and_links() {
    let tar = layer_tar(&[(0, 0, 100), (3, 1, 0), (0, 0, 50), (0, 2, 10), (0, 2, 30)]);
    let d = tempfile::tempdir().unwrap();
    let stats = apply_tar(&tar[..], d.path(), WhiteoutMode::Overlay, Limits::default()).unwrap();
    // a (50, new inode) + b (100, the old a's inode kept by the link) + d/x (30).
    assert_eq!(stats.file_bytes, Some(180));
    assert_eq!(fsutil::tree_size(d.path()).unwrap(), 180);
}

#[test]
fn pax_time_parsing() {
    let t = parse_pax_time(b"1700000000.5").unwrap();
    assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 500_000_000));
    let t = parse_pax_time(b"12").unwrap();
    assert_eq!((t.tv_sec, t.tv_nsec), (12, 0));
    assert!(parse_pax_time(b"1.x").is_none());
}
