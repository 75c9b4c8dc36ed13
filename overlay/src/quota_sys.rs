//! The two kernel interfaces behind project quotas that neither std nor rustix wrap:
//! `FS_IOC_FS{GET,SET}XATTR` (a directory's project id and PROJINHERIT flag) and
//! `quotactl_fd(2)` with `Q_XSETQLIM` (a project's block limits). The structures are built as
//! byte arrays at the offsets of `struct fsxattr` (linux/fs.h) and `struct fs_disk_quota`
//! (linux/dqblk_xfs.h), so the only unsafe code is the three calls themselves.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// `struct fsxattr`: 5 × u32 + 8 bytes padding.
const FSXATTR_LEN: usize = 28;
/// `_IOR('X', 31, struct fsxattr)` / `_IOW('X', 32, struct fsxattr)`.
const FS_IOC_FSGETXATTR: libc::c_ulong =
    (2 << 30) | ((FSXATTR_LEN as libc::c_ulong) << 16) | (0x58 << 8) | 31;
const FS_IOC_FSSETXATTR: libc::c_ulong =
    (1 << 30) | ((FSXATTR_LEN as libc::c_ulong) << 16) | (0x58 << 8) | 32;
const FSX_XFLAGS: usize = 0;
const FSX_PROJID: usize = 12;
const FS_XFLAG_PROJINHERIT: u32 = 0x200;

/// `struct fs_disk_quota` is 112 bytes.
const DQ_LEN: usize = 112;
const FS_DQUOT_VERSION: u8 = 1;
const FS_PROJ_QUOTA: u8 = 2;
const FS_DQ_BSOFT: u16 = 1 << 2;
const FS_DQ_BHARD: u16 = 1 << 3;
/// `QCMD(Q_XSETQLIM, PRJQUOTA)`: `Q_XSETQLIM` is `('X' << 8) + 4`, PRJQUOTA is 2.
const Q_XSETQLIM_PRJ: libc::c_int = ((((b'X' as libc::c_int) << 8) + 4) << 8) | 2;

fn open_dir(dir: &Path) -> io::Result<std::fs::File> {
    std::fs::File::open(dir)
}

fn get_fsxattr(f: &std::fs::File) -> io::Result<[u8; FSXATTR_LEN]> {
    let mut buf = [0u8; FSXATTR_LEN];
    // SAFETY: FS_IOC_FSGETXATTR writes exactly one `struct fsxattr` (FSXATTR_LEN bytes) to
    // the pointer, which points at a buffer of that size that lives across the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FSGETXATTR, buf.as_mut_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[off..off + 4]);
    u32::from_ne_bytes(w)
}

/// The project id of `dir`.
pub fn project_id(dir: &Path) -> io::Result<u32> {
    Ok(u32_at(&get_fsxattr(&open_dir(dir)?)?, FSX_PROJID))
}

/// Sets project `id` and PROJINHERIT on `dir` (new children take the id).
pub fn set_project(dir: &Path, id: u32) -> io::Result<()> {
    let f = open_dir(dir)?;
    let mut buf = get_fsxattr(&f)?;
    let flags = u32_at(&buf, FSX_XFLAGS) | FS_XFLAG_PROJINHERIT;
    buf[FSX_XFLAGS..FSX_XFLAGS + 4].copy_from_slice(&flags.to_ne_bytes());
    buf[FSX_PROJID..FSX_PROJID + 4].copy_from_slice(&id.to_ne_bytes());
    // SAFETY: FS_IOC_FSSETXATTR reads one `struct fsxattr` (FSXATTR_LEN bytes) from the
    // pointer, a live buffer of that size.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FSSETXATTR, buf.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The `struct fs_disk_quota` that sets project `id`'s block soft and hard limit to `bytes`.
fn limit_record(id: u32, bytes: u64) -> [u8; DQ_LEN] {
    let mut d = [0u8; DQ_LEN];
    d[0] = FS_DQUOT_VERSION;
    d[1] = FS_PROJ_QUOTA;
    d[2..4].copy_from_slice(&(FS_DQ_BSOFT | FS_DQ_BHARD).to_ne_bytes());
    d[4..8].copy_from_slice(&id.to_ne_bytes());
    // Limits are in 512-byte basic blocks.
    let blocks = bytes.div_ceil(512);
    d[8..16].copy_from_slice(&blocks.to_ne_bytes()); // d_blk_hardlimit
    d[16..24].copy_from_slice(&blocks.to_ne_bytes()); // d_blk_softlimit
    d
}

/// Sets project `id`'s block limit to `bytes` on the filesystem holding `dir`.
pub fn set_limit(dir: &Path, id: u32, bytes: u64) -> io::Result<()> {
    let f = open_dir(dir)?;
    let mut rec = limit_record(id, bytes);
    // SAFETY: quotactl_fd(fd, Q_XSETQLIM, id, addr) reads one `struct fs_disk_quota`
    // (DQ_LEN bytes) from addr, a live buffer of that size; the fd stays open for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            f.as_raw_fd(),
            Q_XSETQLIM_PRJ as libc::c_uint,
            id as libc::c_int,
            rec.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_and_records_match_the_headers() {
        // Values from linux/fs.h and linux/quota.h as the kernel computes them.
        assert_eq!(FS_IOC_FSGETXATTR, 0x801c_581f);
        assert_eq!(FS_IOC_FSSETXATTR, 0x401c_5820);
        assert_eq!(Q_XSETQLIM_PRJ, 0x0058_0402);
        let r = limit_record(7, 64 << 20);
        assert_eq!(&r[..4], &[1, 2, 12, 0]);
        assert_eq!(u32_at(&r, 4), 7);
        assert_eq!(r[8..16], (131072u64).to_ne_bytes());
        assert_eq!(r[16..24], (131072u64).to_ne_bytes());
        assert!(r[24..].iter().all(|b| *b == 0));
    }

    #[test]
    fn project_id_of_a_plain_directory() {
        // ext4 and XFS answer FS_IOC_FSGETXATTR even without quotas; id 0 by default.
        let d = tempfile::tempdir().unwrap();
        match project_id(d.path()) {
            Ok(id) => assert_eq!(id, 0),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOTTY), "{e}"),
        }
    }
}
