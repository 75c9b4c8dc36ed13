//! Request and reply decoding in both header modes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thinpool::nbd::proto::msg::{
    decode_chunk, decode_reply_header, decode_request, encode_request, HeaderMode,
};

fuzz_target!(|data: &[u8]| {
    for mode in [HeaderMode::Compact, HeaderMode::Extended] {
        let n = mode.request_len();
        if data.len() >= n {
            if let Ok(r) = decode_request(mode, &data[..n]) {
                let mut out = Vec::new();
                encode_request(mode, &r, &mut out);
                assert_eq!(&out[..], &data[..n], "request must re-encode byte for byte");
                let _ = r.payload_len(mode);
            }
        }
    }
    let _ = decode_reply_header(data);
    if data.len() >= 2 {
        let _ = decode_chunk(u16::from_be_bytes([data[0], data[1]]), &data[2..]);
    }
});
