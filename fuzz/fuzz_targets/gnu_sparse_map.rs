//! GNU PAX sparse map decoding (overlay's `sparse` codec) on arbitrary bytes: it must refuse
//! or decode without panicking, and a decoded map re-encodes to the same lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay::sparse::{decode_map_1_0, encode_map_1_0, validate, Decoded};

fuzz_target!(|data: &[u8]| {
    if let Ok(Decoded::Done { chunks, consumed }) = decode_map_1_0(data) {
        assert!(consumed % 512 == 0);
        let enc = encode_map_1_0(&chunks);
        assert_eq!(
            decode_map_1_0(&enc),
            Ok(Decoded::Done { chunks: chunks.clone(), consumed: enc.len() })
        );
        let _ =
            validate(&chunks, u64::MAX, chunks.iter().map(|c| c.len).fold(0u64, u64::wrapping_add));
    }
});
