use super::*;
use crate::pool::names::NameEntry;
use proptest::prelude::*;

fn sample_meta() -> GroupMeta {
    GroupMeta {
        vg_uuid: Uuid([7; 16]),
        extent_size: DEFAULT_EXTENT_SIZE,
        devices: vec![
            DeviceEntry { uuid: Uuid([1; 16]), extents: Extents(100) },
            DeviceEntry { uuid: Uuid([2; 16]), extents: Extents(50) },
        ],
        tmeta: vec![Segment { device: 0, start: Extents(0), len: Extents(1) }],
        tdata: vec![
            Segment { device: 0, start: Extents(1), len: Extents(95) },
            Segment { device: 1, start: Extents(0), len: Extents(10) },
        ],
        config: PoolConfig::default(),
        names: vec![NameTable {
            trans_id: 3,
            volumes: vec![NameEntry { name: "base".into(), id: 1, size: 1 << 30, export: true }],
        }],
    }
}

#[test]
fn rt_label() {
    let l = Label::new(Uuid([9; 16]), Uuid([3; 16]), 2, 1 << 30, DEFAULT_EXTENT_SIZE);
    let b = l.encode();
    assert_eq!(&b[0..8], b"LAMINAVG");
    assert_eq!(Label::decode(&b).unwrap(), l);
    assert_eq!(l.extents(), Extents(((1 << 30) - (4 << 20)) / (4 << 20)));
}

#[test]
fn label_layout_is_pinned() {
    let l = Label::new(Uuid([0xAA; 16]), Uuid([0xBB; 16]), 5, 0x1122_3344_5566, 4 << 20);
    let b = l.encode();
    assert_eq!(&b[12..16], &1u32.to_le_bytes());
    assert_eq!(&b[16..32], &[0xAA; 16]);
    assert_eq!(&b[32..48], &[0xBB; 16]);
    assert_eq!(&b[48..52], &5u32.to_le_bytes());
    assert_eq!(&b[56..64], &0x1122_3344_5566u64.to_le_bytes());
    assert_eq!(&b[64..72], &(4u64 << 20).to_le_bytes());
    assert_eq!(&b[72..80], &(4u64 << 20).to_le_bytes());
    assert_eq!(&b[80..88], &(64u64 << 10).to_le_bytes());
    assert_eq!(&b[88..96], &(2048u64 << 10).to_le_bytes());
    assert_eq!(&b[96..104], &(1984u64 << 10).to_le_bytes());
    assert!(b[104..].iter().all(|&x| x == 0));
    assert_eq!(&b[8..12], &crc32c::crc32c(&b[12..]).to_le_bytes());
}

#[test]
fn label_rejects_damage() {
    let l = Label::new(Uuid([9; 16]), Uuid([3; 16]), 0, 1 << 30, DEFAULT_EXTENT_SIZE);
    let mut b = l.encode();
    b[60] ^= 1;
    assert!(matches!(Label::decode(&b), Err(FormatError::Checksum { .. })));
    assert_eq!(Label::decode(&[0u8; 512]), Err(FormatError::Magic));
    assert_eq!(Label::decode(&b[..100]), Err(FormatError::Short(100)));
    // A well-sealed label with slots overlapping the extents is refused too.
    let bad = Label { data_start: 4096, ..l };
    assert!(matches!(Label::decode(&bad.encode()), Err(FormatError::Field(_))));
}

#[test]
fn rt_slot() {
    let s = Slot { seq: 42, meta: sample_meta() };
    let b = s.encode(SLOT_SIZE).unwrap();
    assert_eq!(b.len() % 4096, 0);
    assert_eq!(&b[0..8], b"LAMVGMDA");
    assert_eq!(&b[16..24], &42u64.to_le_bytes());
    assert_eq!(Slot::decode(&b).unwrap(), s);
}

#[test]
fn slot_rejects_torn_and_empty() {
    let s = Slot { seq: 1, meta: sample_meta() };
    let b = s.encode(SLOT_SIZE).unwrap();
    let total = Slot::total_len(&b).unwrap();
    let mut torn = b.clone();
    torn[total - 1] ^= 0xFF;
    assert!(matches!(Slot::decode(&torn), Err(FormatError::Checksum { .. })));
    // A torn write that only got the first half leaves zeros behind the header.
    let mut half = b.clone();
    half[total / 2..].fill(0);
    assert!(matches!(Slot::decode(&half), Err(FormatError::Checksum { .. })));
    assert_eq!(Slot::decode(&[0u8; 4096]), Err(FormatError::Empty));
    assert_eq!(Slot::decode(&b[..total - 1]), Err(FormatError::Short(total - 1)));
}

/// Two name tables of `n` Docker-style volumes (64-hex-digit names, 24-bit ids, 10 GiB).
fn with_docker_names(n: u64) -> GroupMeta {
    let mut meta = sample_meta();
    let table = |t| NameTable {
        trans_id: t,
        volumes: (0..n)
            .map(|i| NameEntry {
                name: format!("{i:064x}"),
                id: 0xFF_FFFF - i,
                size: 10 << 30,
                export: false,
            })
            .collect(),
    };
    meta.names = vec![table(1), table(2)];
    meta
}

#[test]
fn slot_holds_8000_docker_volumes_and_too_many_is_an_error_not_a_panic() {
    let fits = Slot { seq: 1, meta: with_docker_names(8000) };
    assert_eq!(Slot::decode(&fits.encode(SLOT_SIZE).unwrap()).unwrap(), fits);
    let meta = with_docker_names(20_000);
    assert!(matches!(Slot { seq: 1, meta }.encode(SLOT_SIZE), Err(FormatError::Field(_))));
}

#[test]
fn validate_catches_overlap_and_range() {
    let mut m = sample_meta();
    m.validate().unwrap();
    m.tdata[0].start = Extents(0);
    assert!(m.validate().unwrap_err().to_string().contains("used twice"));
    let mut m = sample_meta();
    m.tdata[1].len = Extents(51);
    assert!(m.validate().unwrap_err().to_string().contains("outside"));
    let mut m = sample_meta();
    m.tdata[1].device = 9;
    assert!(matches!(m.validate(), Err(FormatError::Field(_))));
    let mut m = sample_meta();
    m.devices[0].extents = Extents(u64::MAX);
    assert!(m.validate().unwrap_err().to_string().contains("overflows"));
}

#[test]
fn free_runs_are_the_complement_of_the_regions() {
    let m = sample_meta();
    assert_eq!(
        m.free_runs(),
        vec![
            Segment { device: 0, start: Extents(96), len: Extents(4) },
            Segment { device: 1, start: Extents(10), len: Extents(40) },
        ]
    );
    assert_eq!(m.free_extents(), Extents(44));
    assert_eq!(m.total_extents(), Extents(150));
}

proptest! {
    #[test]
    fn label_decode_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Label::decode(&bytes);
    }

    #[test]
    fn slot_decode_is_total(mut bytes in proptest::collection::vec(any::<u8>(), 0..2000),
                            magic in any::<bool>()) {
        if magic && bytes.len() >= 32 {
            bytes[0..8].copy_from_slice(SLOT_MAGIC);
            let crc = crc32c::crc32c(&bytes[12..]);
            bytes[8..12].copy_from_slice(&crc.to_le_bytes());
        }
        let _ = Slot::decode(&bytes);
    }

    #[test]
    fn rt_label_any(vg in any::<[u8; 16]>(), dev in any::<[u8; 16]>(), idx in any::<u32>(),
                    size in any::<u64>(), ext in 1u64..1024) {
        let l = Label::new(Uuid(vg), Uuid(dev), idx, size, ext * 4096);
        prop_assert_eq!(Label::decode(&l.encode()).unwrap(), l);
    }

    #[test]
    fn rt_slot_any(seq in any::<u64>(), n in 1u64..1000, cut in 1u64..999,
                   names in proptest::collection::vec(("[a-z0-9-]{1,20}", any::<u64>(), any::<u64>()), 0..20)) {
        let cut = cut.min(n - 1).max(1);
        let n = n.max(2);
        let meta = GroupMeta {
            vg_uuid: Uuid([1; 16]),
            extent_size: 4096,
            devices: vec![DeviceEntry { uuid: Uuid([2; 16]), extents: Extents(n) }],
            tmeta: vec![Segment { device: 0, start: Extents(0), len: Extents(cut) }],
            tdata: vec![Segment { device: 0, start: Extents(cut), len: Extents(n - cut) }],
            config: PoolConfig::default(),
            names: vec![NameTable {
                trans_id: seq,
                volumes: names.into_iter().map(|(name, id, size)| NameEntry { name, id, size, export: false }).collect(),
            }],
        };
        let s = Slot { seq, meta };
        prop_assert_eq!(Slot::decode(&s.encode(SLOT_SIZE).unwrap()).unwrap(), s);
    }
}
