use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Per-block model: what each virtual block looks like on each side.
fn model(left: &BTreeMap<u64, u64>, right: &BTreeMap<u64, u64>) -> Vec<(u64, Change)> {
    let mut keys: Vec<u64> = left.keys().chain(right.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter()
        .map(|k| {
            let c = match (left.get(&k), right.get(&k)) {
                (Some(a), Some(b)) if a == b => Change::Same,
                (Some(_), Some(_)) => Change::Different,
                (Some(_), None) => Change::LeftOnly,
                (None, _) => Change::RightOnly,
            };
            (k, c)
        })
        .collect()
}

fn blocks(ranges: &[DeltaRange]) -> Vec<(u64, Change)> {
    ranges.iter().flat_map(|r| (r.begin.0..r.begin.0 + r.len).map(move |b| (b, r.change))).collect()
}

fn mapping() -> impl Strategy<Value = BTreeMap<u64, u64>> {
    // Small key and data spaces so runs, overlaps and equal blocks are common.
    proptest::collection::btree_map(0u64..64, 0u64..48, 0..40)
}

proptest! {
    #[test]
    fn diff_matches_the_per_block_model(l in mapping(), r in mapping()) {
        let le = extents(l.iter().map(|(&k, &v)| (k, v)));
        let re = extents(r.iter().map(|(&k, &v)| (k, v)));
        let d = diff(&le, &re);
        prop_assert_eq!(blocks(&d), model(&l, &r));
        // Ranges are merged: no two neighbours of one kind touch.
        for w in d.windows(2) {
            prop_assert!(w[0].begin.0 + w[0].len <= w[1].begin.0);
            prop_assert!(!(w[0].change == w[1].change && w[0].begin.0 + w[0].len == w[1].begin.0));
        }
    }
}

#[test]
fn xml_prints_every_range_as_thin_delta_does() {
    let left = [Extent { vbegin: 0, dbegin: 100, len: 20 }];
    let right =
        [Extent { vbegin: 0, dbegin: 100, len: 5 }, Extent { vbegin: 5, dbegin: 7, len: 5 }];
    let h = Header {
        time: 1,
        trans_id: 2,
        data_block_size: 128,
        nr_data_blocks: 1000,
        metadata_snap: Some(9),
    };
    let x = render_xml(&h, ThinId(0), ThinId(1), &left, &right);
    assert_eq!(
        x,
        "<superblock uuid=\"\" time=\"1\" transaction=\"2\" data_block_size=\"128\" \
         nr_data_blocks=\"1000\" metadata_snap=\"9\">\n  <diff left=\"0\" right=\"1\">\n    \
         <same begin=\"0\" length=\"5\"/>\n    <different begin=\"5\" length=\"5\"/>\n    \
         <left_only begin=\"10\" length=\"10\"/>\n  </diff>\n</superblock>\n"
    );
}
