//! Option decoding: a header, then the payload decoded as the option the header names (and as
//! every known option, so each decoder sees every byte pattern).
#![no_main]

use libfuzzer_sys::fuzz_target;
use thinpool::nbd::proto::opt::{
    decode_option, decode_option_header, decode_option_reply, OPTION_HEADER_LEN,
};

fuzz_target!(|data: &[u8]| {
    if data.len() >= OPTION_HEADER_LEN {
        let _ = decode_option_header(&data[..OPTION_HEADER_LEN], 64 << 10);
    }
    if data.len() < 4 {
        return;
    }
    let code = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let payload = &data[4..];
    if let Ok(opt) = decode_option(code, payload) {
        // Whatever decodes must re-encode to the same payload (ABORT ignores its payload).
        let enc = thinpool::nbd::proto::opt::encode_option(&opt);
        if code != thinpool::nbd::proto::wire::OPT_ABORT {
            assert_eq!(&enc[OPTION_HEADER_LEN..], payload);
        }
    }
    for known in 1..=11 {
        let _ = decode_option(known, payload);
    }
    let _ = decode_option_reply(code, payload);
});
