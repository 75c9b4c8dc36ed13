//! Reply codecs: a reply header, and a chunk payload that must survive encode → decode (in
//! both header modes) unchanged, with the header's length matching the payload it frames.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thinpool::nbd::proto::msg::{
    decode_chunk, decode_reply_header, encode_chunk, reply_header_len, Chunk, HeaderMode,
    ReplyHeader,
};

fuzz_target!(|data: &[u8]| {
    let _ = decode_reply_header(data);
    if data.len() < 3 {
        return;
    }
    let kind = u16::from_be_bytes([data[0], data[1]]);
    let done = data[2] & 1 != 0;
    let Ok(chunk) = decode_chunk(kind, &data[3..]) else { return };
    for mode in [HeaderMode::Compact, HeaderMode::Extended] {
        let mut out = Vec::new();
        encode_chunk(mode, done, 7, 4096, &chunk, &mut out);
        let hlen = reply_header_len(out[..4].try_into().unwrap()).expect("own magic");
        let ReplyHeader::Chunk { kind, length, cookie, flags, .. } =
            decode_reply_header(&out[..hlen]).expect("own header decodes")
        else {
            panic!("a chunk encoded as a simple reply");
        };
        assert_eq!(cookie, 7);
        assert_eq!(flags & 1 != 0, done, "DONE flag");
        assert_eq!(length as usize, out.len() - hlen, "header length frames the payload");
        let again = decode_chunk(kind, &out[hlen..]).expect("own chunk decodes");
        match (&chunk, &again) {
            // Messages may be shortened to fit; the code must survive.
            (Chunk::Error { error: a, message: m }, Chunk::Error { error: b, message: n }) => {
                assert_eq!(a, b);
                assert!(m.starts_with(n.as_str()));
            }
            _ => assert_eq!(chunk, again, "chunk round trip"),
        }
    }
});
