//! The send stream reader on arbitrary bytes: it must refuse or accept without panicking,
//! and whatever it accepts must be a stream the writer produces byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thinpool::delta::stream::{Reader, Record, Writer};

fuzz_target!(|data: &[u8]| {
    let Ok((mut r, h)) = Reader::new(data) else { return };
    let mut records = Vec::new();
    loop {
        match r.next_record() {
            Ok(Record::End(t)) => {
                let mut w = Writer::new(Vec::new(), &h).unwrap();
                for rec in records {
                    match rec {
                        Record::Data { offset, data } => w.data(offset, &data).unwrap(),
                        Record::Zero { offset, len } => w.zero(offset, len).unwrap(),
                        Record::End(_) => unreachable!(),
                    }
                }
                let (out, _) = w.finish(t.content_sha256).unwrap();
                assert_eq!(out, data);
                return;
            }
            Ok(rec) => records.push(rec),
            Err(_) => return,
        }
    }
});
