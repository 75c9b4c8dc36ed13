//! Round-trip, golden-byte and property tests for the NBD codecs.

use proptest::prelude::*;

use super::msg::*;
use super::opt::*;
use super::wire::*;

fn rt_option(o: ClientOption) {
    let bytes = encode_option(&o);
    let h = decode_option_header(&bytes[..OPTION_HEADER_LEN], MAX_STRING as u32 * 4).unwrap();
    assert_eq!(h.option, o.code());
    assert_eq!(h.len as usize, bytes.len() - OPTION_HEADER_LEN);
    assert_eq!(decode_option(h.option, &bytes[OPTION_HEADER_LEN..]).unwrap(), o);
}

fn rt_reply(option: u32, r: OptionReply) {
    let mut out = Vec::new();
    encode_option_reply(option, &r, &mut out);
    let h = decode_option_reply_header(&out[..OPTION_REPLY_HEADER_LEN]).unwrap();
    assert_eq!(h.option, option);
    assert_eq!(h.len as usize, out.len() - OPTION_REPLY_HEADER_LEN);
    assert_eq!(decode_option_reply(h.kind, &out[OPTION_REPLY_HEADER_LEN..]).unwrap(), r);
}

fn rt_chunk(mode: HeaderMode, done: bool, c: Chunk) {
    let mut out = Vec::new();
    encode_chunk(mode, done, 0x1122_3344_5566_7788, 4096, &c, &mut out);
    let hl = reply_header_len(out[..4].try_into().unwrap()).unwrap();
    assert_eq!(hl, mode.chunk_header_len());
    let ReplyHeader::Chunk { extended, flags, kind, cookie, offset, length } =
        decode_reply_header(&out[..hl]).unwrap()
    else {
        panic!("expected a chunk header");
    };
    assert_eq!(extended, mode == HeaderMode::Extended);
    assert_eq!(flags & REPLY_FLAG_DONE != 0, done);
    assert_eq!(kind, c.kind());
    assert_eq!(cookie, 0x1122_3344_5566_7788);
    assert_eq!(offset, if extended { 4096 } else { 0 });
    assert_eq!(length as usize, out.len() - hl);
    assert_eq!(decode_chunk(kind, &out[hl..]).unwrap(), c);
}

#[test]
fn rt_greeting() {
    let g = encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    assert_eq!(&g[..8], b"NBDMAGIC");
    assert_eq!(&g[8..16], b"IHAVEOPT");
    assert_eq!(decode_greeting(&g).unwrap(), 3);
    let mut bad = g;
    bad[0] = b'X';
    assert!(matches!(decode_greeting(&bad), Err(ProtoError::BadMagic { .. })));
}

#[test]
fn rt_options() {
    rt_option(ClientOption::ExportName("vol-1".into()));
    rt_option(ClientOption::ExportName(String::new()));
    rt_option(ClientOption::Abort);
    rt_option(ClientOption::List);
    rt_option(ClientOption::StartTls);
    rt_option(ClientOption::StructuredReply);
    rt_option(ClientOption::ExtendedHeaders);
    rt_option(ClientOption::Info(ExportQuery { name: "a".into(), info: vec![] }));
    rt_option(ClientOption::Go(ExportQuery {
        name: "docker-thinpool".into(),
        info: vec![INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE],
    }));
    rt_option(ClientOption::ListMetaContext(MetaQuery { export: "x".into(), queries: vec![] }));
    rt_option(ClientOption::SetMetaContext(MetaQuery {
        export: String::new(),
        queries: vec!["base:allocation".into(), "qemu:dirty-bitmap:a".into()],
    }));
    rt_option(ClientOption::Unknown { option: 0x7654321, data: vec![1, 2, 3, 4] });
}

#[test]
fn rt_option_replies() {
    rt_reply(OPT_GO, OptionReply::Ack);
    rt_reply(OPT_LIST, OptionReply::Server { name: "v".into(), description: "desc".into() });
    rt_reply(OPT_LIST, OptionReply::Server { name: "v".into(), description: String::new() });
    rt_reply(OPT_INFO, OptionReply::Info(InfoItem::Export { size: 1 << 40, flags: 0x0ded }));
    rt_reply(OPT_INFO, OptionReply::Info(InfoItem::Name("n".into())));
    rt_reply(OPT_INFO, OptionReply::Info(InfoItem::Description("d".into())));
    rt_reply(
        OPT_GO,
        OptionReply::Info(InfoItem::BlockSize { minimum: 1, preferred: 4096, maximum: 32 << 20 }),
    );
    rt_reply(
        OPT_SET_META_CONTEXT,
        OptionReply::MetaContext { id: 1, name: "base:allocation".into() },
    );
    rt_reply(7, OptionReply::Error { code: REP_ERR_UNKNOWN, message: "no such export".into() });
    rt_reply(99, OptionReply::Error { code: REP_ERR_UNSUP, message: String::new() });
}

#[test]
fn rt_export_name_reply() {
    for nz in [false, true] {
        let mut out = Vec::new();
        encode_export_name_reply(12345, 0x1ed, nz, &mut out);
        assert_eq!(out.len(), if nz { 10 } else { 134 });
        assert_eq!(decode_export_name_reply(&out).unwrap(), (12345, 0x1ed));
    }
}

#[test]
fn rt_requests() {
    let r = Request {
        flags: CMD_FLAG_FUA,
        command: CMD_WRITE,
        cookie: 7,
        offset: 1 << 33,
        length: 4096,
    };
    for mode in [HeaderMode::Compact, HeaderMode::Extended] {
        let mut out = Vec::new();
        encode_request(mode, &r, &mut out);
        assert_eq!(out.len(), mode.request_len());
        assert_eq!(decode_request(mode, &out).unwrap(), r);
    }
    // Extended lengths beyond 32 bits survive.
    let big = Request { command: CMD_TRIM, length: 1 << 40, ..r };
    let mut out = Vec::new();
    encode_request(HeaderMode::Extended, &big, &mut out);
    assert_eq!(decode_request(HeaderMode::Extended, &out).unwrap(), big);
}

#[test]
fn request_golden_bytes() {
    // A READ of 512 bytes at offset 1024, cookie 0x0102030405060708, compact header.
    let r = Request {
        flags: 0,
        command: CMD_READ,
        cookie: 0x0102030405060708,
        offset: 1024,
        length: 512,
    };
    let mut out = Vec::new();
    encode_request(HeaderMode::Compact, &r, &mut out);
    let want: [u8; 28] = [
        0x25, 0x60, 0x95, 0x13, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0,
        2, 0,
    ];
    assert_eq!(out, want);
}

#[test]
fn request_magic_must_match_the_mode() {
    let r = Request::default();
    let mut compact = Vec::new();
    encode_request(HeaderMode::Compact, &r, &mut compact);
    let mut ext = Vec::new();
    encode_request(HeaderMode::Extended, &r, &mut ext);
    assert!(matches!(
        decode_request(HeaderMode::Extended, &ext[..28]),
        Err(ProtoError::Truncated { .. })
    ));
    let mut wrong = ext.clone();
    wrong[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    assert!(matches!(
        decode_request(HeaderMode::Extended, &wrong),
        Err(ProtoError::BadMagic { .. })
    ));
    compact[0] ^= 0xff;
    assert!(matches!(
        decode_request(HeaderMode::Compact, &compact),
        Err(ProtoError::BadMagic { .. })
    ));
}

#[test]
fn rt_simple_reply() {
    let mut out = Vec::new();
    encode_simple_reply(42, EINVAL, &mut out);
    assert_eq!(out.len(), SIMPLE_REPLY_LEN);
    assert_eq!(reply_header_len(out[..4].try_into().unwrap()).unwrap(), 16);
    assert_eq!(
        decode_reply_header(&out).unwrap(),
        ReplyHeader::Simple { error: EINVAL, cookie: 42 }
    );
}

#[test]
fn rt_chunks() {
    for mode in [HeaderMode::Compact, HeaderMode::Extended] {
        rt_chunk(mode, true, Chunk::None);
        rt_chunk(mode, false, Chunk::OffsetData { offset: 8192, data: vec![1, 2, 3] });
        rt_chunk(mode, true, Chunk::OffsetHole { offset: 8192, len: 65536 });
        rt_chunk(mode, true, Chunk::Error { error: EIO, message: "boom".into() });
        rt_chunk(mode, true, Chunk::ErrorOffset { error: EIO, message: String::new(), offset: 9 });
    }
    rt_chunk(
        HeaderMode::Compact,
        true,
        Chunk::BlockStatus { context: 1, extents: vec![(4096, 3), (512, 0)] },
    );
    rt_chunk(
        HeaderMode::Extended,
        true,
        Chunk::BlockStatusExt { context: 1, extents: vec![(1 << 40, 3), (512, 2)] },
    );
}

#[test]
fn offset_data_prefix_matches_a_whole_chunk() {
    for mode in [HeaderMode::Compact, HeaderMode::Extended] {
        let data = vec![9u8; 100];
        let mut whole = Vec::new();
        encode_chunk(
            mode,
            true,
            5,
            64,
            &Chunk::OffsetData { offset: 640, data: data.clone() },
            &mut whole,
        );
        let mut prefix = Vec::new();
        encode_offset_data_prefix(mode, true, 5, 64, 640, 100, &mut prefix);
        prefix.extend_from_slice(&data);
        assert_eq!(prefix, whole);
    }
}

#[test]
fn option_decoders_reject_inconsistent_lengths() {
    // GO whose name length is larger than the option.
    let mut p = Vec::new();
    p.put_u32(1000);
    p.extend_from_slice(b"abc");
    p.put_u16(0);
    let too_long = "name length exceeds the option length";
    assert_eq!(decode_option(OPT_GO, &p), Err(invalid("GO", too_long)));
    // GO whose info count disagrees with the option length.
    let mut p = Vec::new();
    p.put_u32(1);
    p.push(b'a');
    p.put_u16(3);
    p.put_u16(INFO_NAME);
    let count = "info request count disagrees with the option length";
    assert_eq!(decode_option(OPT_INFO, &p), Err(invalid("INFO", count)));
    // Payload on LIST / STRUCTURED_REPLY / EXTENDED_HEADERS / STARTTLS.
    for (o, what) in [
        (OPT_LIST, "LIST"),
        (OPT_STRUCTURED_REPLY, "STRUCTURED_REPLY"),
        (OPT_EXTENDED_HEADERS, "EXTENDED_HEADERS"),
        (OPT_STARTTLS, "STARTTLS"),
    ] {
        assert_eq!(decode_option(o, &[0]), Err(invalid(what, "option takes no payload")));
    }
    // A 5000-byte name is over the protocol's string limit.
    let mut p = Vec::new();
    p.put_u32(5000);
    p.extend_from_slice(&[b'a'; 5000]);
    p.put_u16(0);
    assert!(matches!(decode_option(OPT_GO, &p), Err(ProtoError::TooLong { .. })));
    // NUL and invalid UTF-8 in names.
    let nul = invalid("EXPORT_NAME", "string contains NUL");
    assert_eq!(decode_option(OPT_EXPORT_NAME, b"a\0b"), Err(nul));
    let utf8 = invalid("EXPORT_NAME", "string is not UTF-8");
    assert_eq!(decode_option(OPT_EXPORT_NAME, &[0xff, 0xfe]), Err(utf8));
    // Meta-context query count larger than present.
    let mut p = Vec::new();
    p.put_u32(0);
    p.put_u32(0xffff_ffff);
    let short = ProtoError::Truncated { what: "SET_META_CONTEXT", need: 4, have: 0 };
    assert_eq!(decode_option(OPT_SET_META_CONTEXT, &p), Err(short));
    // Option header with an absurd length is refused before any payload is read.
    let mut h = Vec::new();
    h.put_u64(IHAVEOPT);
    h.put_u32(OPT_GO);
    h.put_u32(0xffff_fff0);
    assert!(matches!(decode_option_header(&h, 65536), Err(ProtoError::TooLong { .. })));
}

fn arb_string() -> impl Strategy<Value = String> {
    "[a-z0-9:_-]{0,40}"
}

fn arb_option() -> impl Strategy<Value = ClientOption> {
    prop_oneof![
        arb_string().prop_map(ClientOption::ExportName),
        Just(ClientOption::Abort),
        Just(ClientOption::List),
        Just(ClientOption::StructuredReply),
        Just(ClientOption::ExtendedHeaders),
        (arb_string(), proptest::collection::vec(any::<u16>(), 0..8))
            .prop_map(|(name, info)| ClientOption::Go(ExportQuery { name, info })),
        (arb_string(), proptest::collection::vec(any::<u16>(), 0..8))
            .prop_map(|(name, info)| ClientOption::Info(ExportQuery { name, info })),
        (arb_string(), proptest::collection::vec(arb_string(), 0..5)).prop_map(
            |(export, queries)| ClientOption::SetMetaContext(MetaQuery { export, queries })
        ),
        (arb_string(), proptest::collection::vec(arb_string(), 0..5)).prop_map(
            |(export, queries)| ClientOption::ListMetaContext(MetaQuery { export, queries })
        ),
        (12u32..u32::MAX, proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(option, data)| ClientOption::Unknown { option, data }),
    ]
}

proptest! {
    #[test]
    fn prop_options_round_trip(o in arb_option()) {
        rt_option(o);
    }

    #[test]
    fn prop_requests_round_trip(flags: u16, command: u16, cookie: u64, offset: u64, length: u32, ext: bool) {
        let mode = if ext { HeaderMode::Extended } else { HeaderMode::Compact };
        let r = Request { flags, command, cookie, offset, length: length.into() };
        let mut out = Vec::new();
        encode_request(mode, &r, &mut out);
        prop_assert_eq!(decode_request(mode, &out).unwrap(), r);
    }

    #[test]
    fn prop_block_status_round_trip(ext in proptest::collection::vec((1u32.., 0u32..4), 1..50)) {
        rt_chunk(HeaderMode::Compact, true, Chunk::BlockStatus { context: 1, extents: ext });
    }

    /// Decoders are total: arbitrary bytes give Ok or Err, never a panic.
    #[test]
    fn prop_decoders_never_panic(option: u32, kind: u32, ck: u16, bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_option(option, &bytes);
        let _ = decode_option(option % 12, &bytes);
        let _ = decode_option_header(&bytes, 65536);
        let _ = decode_option_reply(kind, &bytes);
        let _ = decode_option_reply(kind % 5, &bytes);
        let _ = decode_chunk(ck, &bytes);
        let _ = decode_chunk(ck % 7, &bytes);
        let _ = decode_reply_header(&bytes);
        let _ = decode_greeting(&bytes);
        let _ = decode_export_name_reply(&bytes);
        for mode in [HeaderMode::Compact, HeaderMode::Extended] {
            let _ = decode_request(mode, &bytes);
            if bytes.len() >= mode.request_len() {
                let _ = decode_request(mode, &bytes[..mode.request_len()]);
            }
        }
    }
}
