//! Unit tests of names, tags and driver names.

use super::*;

#[test]
fn tag_rules() {
    assert_eq!(normalize_tag("busybox").unwrap(), "busybox:latest");
    assert_eq!(normalize_tag("a/b:v1").unwrap(), "a/b:v1");
    assert_eq!(normalize_tag("host:5000/a").unwrap(), "host:5000/a:latest");
    let e = normalize_tag("a b").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert!(e.to_string().contains("invalid image reference \"a b\""), "{e}");
    assert_eq!(short_tag("docker.io/library/x:1"), "x:1");
}

#[test]
fn aufs_and_zfs_are_refused_with_the_reason() {
    let e = Driver::from_name("aufs").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("never merged into mainline Linux"), "{e}");
    let e = Driver::from_name("zfs").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("not part of Debian's kernel"), "{e}");
    assert_eq!(Driver::from_name("devicemapper").unwrap(), Driver::Devicemapper);
    assert_eq!(Driver::from_name("aufs2").unwrap_err().kind(), ErrorKind::Invalid);
    assert_eq!(Driver::from_name("overlay2").unwrap(), Driver::Overlay);
    assert_eq!(Driver::from_name("btrfs").unwrap(), Driver::Btrfs);
}

#[test]
fn name_rules() {
    assert!(check_name("container", "web-1.a_b").is_ok());
    for bad in ["../x", "", "x-removing"] {
        let e = check_name("container", bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{bad}");
        assert!(e.to_string().contains(&format!("invalid container name {bad:?}")), "{e}");
    }
}
