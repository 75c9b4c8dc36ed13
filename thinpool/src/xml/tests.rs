use super::*;

const SAMPLE: &str = r#"<superblock uuid="" time="1" transaction="5" flags="0" version="2" data_block_size="128" nr_data_blocks="100000">
  <device dev_id="7" mapped_blocks="301" transaction="2" creation_time="1" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="300" time="0"/>
    <single_mapping origin_block="5000" data_block="400" time="1"/>
  </device>
  <device dev_id="9" mapped_blocks="0" transaction="2" creation_time="1" snap_time="1">
  </device>
</superblock>
"#;

#[test]
fn rt_parse_render_is_identity_on_dump_output() {
    let md = parse(SAMPLE).unwrap();
    assert_eq!(md.devices.len(), 2);
    assert_eq!(md.devices[0].nr_mappings(), 301);
    assert_eq!(render(&md), SAMPLE);
}

#[test]
fn push_coalesces_like_thin_dump() {
    let mut d = Device::default();
    for (v, b, t) in [(0, 10, 0), (1, 11, 1), (2, 12, 1), (3, 12, 1), (5, 14, 1), (6, 13, 1)] {
        d.push(VirtBlock(v), DataBlock(b), t);
    }
    let lens: Vec<u64> = d.mappings.iter().map(|r| r.len).collect();
    assert_eq!(lens, [1, 2, 1, 1, 1]);
    assert_eq!(d.blocks().count(), 6);
}

fn kind_of(xml: &str) -> (XmlErrorKind, usize) {
    let e = parse(xml).unwrap_err();
    assert!(!e.to_string().is_empty());
    (e.kind, e.line)
}

#[test]
fn rejects_unknown_elements_and_attributes_with_their_line() {
    let bad = SAMPLE.replace(
        "<single_mapping origin_block=\"5000\"",
        "<def name=\"x\"/><single_mapping origin_block=\"5000\"",
    );
    assert_eq!(kind_of(&bad), (XmlErrorKind::UnknownElement, 4));
    let bad = SAMPLE
        .replace("snap_time=\"1\">\n    <range", "snap_time=\"1\" colour=\"red\">\n    <range");
    assert_eq!(kind_of(&bad), (XmlErrorKind::UnknownAttribute, 2));
    let bad = SAMPLE.replace(" length=\"300\"", "");
    assert_eq!(kind_of(&bad).0, XmlErrorKind::MissingAttribute);
    let bad = SAMPLE.replace("length=\"300\"", "length=\"3x\"");
    assert_eq!(kind_of(&bad).0, XmlErrorKind::BadValue);
    let bad = SAMPLE.replace("time=\"1\"/>", "time=\"16777216\"/>");
    assert_eq!(kind_of(&bad).0, XmlErrorKind::BadValue);
}

#[test]
fn rejects_out_of_order_mappings_and_repeated_devices() {
    let bad = SAMPLE.replace("origin_block=\"5000\"", "origin_block=\"299\"");
    let e = parse(&bad).unwrap_err();
    assert_eq!((e.kind, e.line, e.element.as_str()), (XmlErrorKind::Order, 4, "single_mapping"));
    let bad = SAMPLE.replace("dev_id=\"9\"", "dev_id=\"7\"");
    assert_eq!(kind_of(&bad).0, XmlErrorKind::Order);
}

#[test]
fn rejects_truncated_and_malformed_documents() {
    let cut = kind_of(&SAMPLE[..SAMPLE.len() - 20]).0;
    assert!(matches!(cut, XmlErrorKind::Structure | XmlErrorKind::Syntax), "{cut:?}");
    assert_eq!(kind_of(&SAMPLE.replace("</superblock>\n", "")).0, XmlErrorKind::Structure);
    assert_eq!(kind_of("<superblock uuid=\"\"").0, XmlErrorKind::Syntax);
    assert_eq!(kind_of("").0, XmlErrorKind::Structure);
    assert_eq!(kind_of("<device/>").0, XmlErrorKind::UnknownElement);
}

proptest::proptest! {
    #[test]
    fn parse_never_panics(s in "\\PC{0,200}") {
        let _ = parse(&s);
    }

    #[test]
    fn rt_runs_survive_render_and_parse(
        maps in proptest::collection::vec((0u64..4, 0u64..1000, 0u32..3), 0..60)
    ) {
        let mut d = Device { dev_id: ThinId(3), ..Device::default() };
        let mut v = 0;
        for (gap, data, time) in maps {
            v += gap + 1;
            d.push(VirtBlock(v), DataBlock(data), time);
        }
        d.mapped_blocks = d.nr_mappings();
        let md = Metadata { data_block_size: 128, nr_data_blocks: 2000, version: Some(2), devices: vec![d], ..Metadata::default() };
        let back = parse(&render(&md)).unwrap();
        proptest::prop_assert_eq!(back, md);
    }
}
