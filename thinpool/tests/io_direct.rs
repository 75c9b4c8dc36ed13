//! FileDevice on a real block device (a loop device over a sparse file): aligned reads and
//! writes go through its O_DIRECT descriptor, others through the page cache, and each sees
//! what the other wrote (the kernel keeps the two coherent).

use std::process::Command;

use thinpool::io::{BlockDevice, FileDevice, DIRECT_ALIGN};

/// A `len`-byte slice of `v` that starts on a DIRECT_ALIGN boundary.
fn aligned(v: &mut Vec<u8>, len: usize) -> &mut [u8] {
    v.resize(len + DIRECT_ALIGN as usize, 0);
    let skip = (DIRECT_ALIGN as usize - v.as_ptr() as usize % DIRECT_ALIGN as usize)
        % DIRECT_ALIGN as usize;
    &mut v[skip..skip + len]
}

struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn aligned_io_goes_direct_and_stays_coherent_with_buffered_io() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img).unwrap().set_len(16 << 20).unwrap();
    let out = Command::new("losetup")
        .args(["--find", "--show", img.to_str().unwrap()])
        .output()
        .expect("losetup (util-linux) is needed");
    assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
    let lo = Loop(String::from_utf8(out.stdout).unwrap().trim().to_owned());
    let dev = FileDevice::open(lo.0.as_ref()).unwrap();
    assert!(dev.direct_io(), "{} was opened without O_DIRECT", lo.0);
    // A regular file keeps the page cache only.
    assert!(!FileDevice::open(&img).unwrap().direct_io());

    // Aligned write (direct), then an unaligned buffered read of the same bytes.
    let mut a = Vec::new();
    let buf = aligned(&mut a, 8192);
    buf.fill(0x5a);
    dev.write_at(buf, 4096).unwrap();
    let mut back = vec![0u8; 8193];
    dev.read_at(&mut back[1..], 4096).unwrap();
    assert!(back[1..].iter().all(|b| *b == 0x5a));

    // Buffered write (unaligned buffer), then an aligned direct read sees it.
    let plain = vec![0xa5u8; 4097];
    dev.write_at(&plain[1..], 4096).unwrap();
    let mut c = Vec::new();
    let rd = aligned(&mut c, 4096);
    dev.read_at(rd, 4096).unwrap();
    assert!(rd.iter().all(|b| *b == 0xa5), "direct read missed a buffered write");
    dev.flush().unwrap();
}
