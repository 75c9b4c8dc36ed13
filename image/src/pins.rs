//! Every Debian package that reaches the image, pinned by name, exact version and SHA-256.
//!
//! The archive drops old kernel ABIs as point releases roll; when a pin disappears the fetch
//! fails with the command that shows what is current (see [`crate::fetch`]). To re-pin:
//!
//! ```text
//! apt-get update
//! apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64$' | sort -V | tail -1
//! apt-cache show linux-image-6.12.NN+deb12-cloud-amd64 | grep -E '^(Package|Version|SHA256):'
//! ```
//! then edit the constants below and regenerate the listing snapshot
//! (`LAMINA_UPDATE_LISTING=1 cargo test -p image --test listing`).

/// One pinned `.deb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebPin {
    pub package: &'static str,
    pub version: &'static str,
    /// SHA-256 of the `.deb` file, as `apt-cache show` prints it.
    pub sha256: &'static str,
}

/// Debian 12's 6.12 cloud kernel from bookworm-security (pinned 2026-12-04, the newest then):
/// the first Debian 12 kernel with ublk (`CONFIG_BLK_DEV_UBLK=m`). Its modules are `.ko.xz`
/// and its bzImage payload is Zstandard; [`crate::modules`] and [`crate::vmlinux`] unpack both.
pub const KERNEL: DebPin = DebPin {
    package: "linux-image-6.12.118+deb12-cloud-amd64",
    version: "6.12.118-1~deb12u1",
    sha256: "0ba1bf9b2f7b1b8eefc59e8e25c0f3c788cbdfd67061c088b332d443354e9800",
};

/// `mkfs.xfs`, `xfs_quota`, `crun`, btrfs-progs and the libraries they need (resolved from DT_NEEDED at build time; a library that
/// no pinned package provides is an error), plus busybox for debug sessions (`lamina.debug=1`).
pub const USERLAND: &[DebPin] = &[
    DebPin {
        package: "xfsprogs",
        version: "6.1.0-1",
        sha256: "e2d2a60dd29d568b5724b66d9ff864305cec61a15e6ba842079398524e1c5718",
    },
    DebPin {
        package: "libblkid1",
        version: "2.38.1-5+deb12u3",
        sha256: "5a083377f29191cafcdf0f91ec124349b4a7895b531556633a136e43c6d53943",
    },
    DebPin {
        package: "libuuid1",
        version: "2.38.1-5+deb12u3",
        sha256: "5fff398321da62d28a842bcbabd193d72ae21724962c029dc32b1dc6b2deaeaf",
    },
    DebPin {
        package: "libinih1",
        version: "55-1",
        sha256: "1286ddab2ef1050389e585ad3bfd0a0d9bdd26475003a33b4eec884bccd50477",
    },
    DebPin {
        package: "liburcu8",
        version: "0.13.2-1",
        sha256: "8647049698200fb5e20a130a09059b51878bb98643a120c7b0c6cbfd3f9b42dd",
    },
    DebPin {
        package: "libc6",
        version: "2.36-9+deb12u14",
        sha256: "ba4f88f73dbc3ae9055f3c20f4523bfdbaf1ad13ff95e258924f77d20b4fbedf",
    },
    // xfs_quota (from xfsprogs above) sets `layerstore create --size` project quotas; the
    // libraries it needs beyond libc.
    DebPin {
        package: "libedit2",
        version: "3.1-20221030-2",
        sha256: "1cf14abf2716d3279db12d0657a5737cf70074a1e71d3bdf73206625e3c89ce6",
    },
    DebPin {
        package: "libtinfo6",
        version: "6.4-4",
        sha256: "072d908f38f51090ca28ca5afa3b46b2957dc61fe35094c0b851426859a49a51",
    },
    DebPin {
        package: "libbsd0",
        version: "0.11.7-2",
        sha256: "bb31cc8b40f962a85b2cec970f7f79cc704a1ae4bad24257a822055404b2c60b",
    },
    DebPin {
        package: "libmd0",
        version: "1.0.4-2",
        sha256: "03539fd30c509e27101d13a56e52eda9062bdf1aefe337c07ab56def25a13eab",
    },
    // crun, the OCI runtime of the layer store (smaller than runc: 0.5 MB + ~3.6 MB of
    // libraries against runc's 8.8 MB Go binary), and the libraries it needs beyond libc.
    DebPin {
        package: "crun",
        version: "1.8.1-1+deb12u1",
        sha256: "34bdcf1a097ec34da2e7b77b65fa351134702af775174af22555b16421709c51",
    },
    DebPin {
        package: "libsystemd0",
        version: "252.39-1~deb12u2",
        sha256: "013c07514a9e4933b2d5c098018695a6aa42d085dbc483ce2c094a954c8a1b0a",
    },
    DebPin {
        package: "libseccomp2",
        version: "2.5.4-1+deb12u1",
        sha256: "108fe67957ca7cf9ba51d801118a1b37d404bea7b6e365025cd00779e9eca38d",
    },
    DebPin {
        package: "libcap2",
        version: "1:2.66-4+deb12u3+b1",
        sha256: "8d684c673e7483802a5c447834b0df6fce006eb3a7109e1be412f5ad425bb24f",
    },
    DebPin {
        package: "libyajl2",
        version: "2.1.0-3+deb12u2",
        sha256: "b512a6efbe735e7c731185a1b3ea477ff306f0c3f6aa2970e85b12f01fe8063b",
    },
    DebPin {
        package: "libgcrypt20",
        version: "1.10.1-3+deb12u1",
        sha256: "e7a56552139c693904a6f9712234c05fe918353273a7cbdb5e62f423ad71bb97",
    },
    DebPin {
        package: "libgpg-error0",
        version: "1.46-1",
        sha256: "89944ee11d7370ce6ef46fc52f094c4a6512eff8943ec4c6ebefeae6360ceada",
    },
    DebPin {
        package: "liblz4-1",
        version: "1.9.4-1",
        sha256: "64cde86cef1deaf828bd60297839b59710b5cd8dc50efd4f12643caaee9389d3",
    },
    DebPin {
        package: "liblzma5",
        version: "5.4.1-1+deb12u2",
        sha256: "3d8c29c8c21ec6007635e1b2591edf98b771c9572a085968f47452b33040f384",
    },
    DebPin {
        package: "libzstd1",
        version: "1.5.4+dfsg2-5",
        sha256: "6315b5ac38b724a710fb96bf1042019398cb656718b1522279a5185ed39318fa",
    },
    // Encryption at rest: Debian's cryptsetup (LUKS2 format and open; the kernel's dm-crypt
    // does the I/O) and the libraries it needs beyond libc, libblkid and libuuid. libdevmapper
    // and libcryptsetup also serve the dm test variant and fio.
    DebPin {
        package: "cryptsetup-bin",
        version: "2:2.6.1-4~deb12u2",
        sha256: "ac25a10b8c7a5fbd4ffe64a830edd24a7e04b3416914bbb096c21e92e15a65d2",
    },
    DebPin {
        package: "libcryptsetup12",
        version: "2:2.6.1-4~deb12u2",
        sha256: "b9a607c219be5ef04bc0fcfaec3752d9a1ba07df8d3bb2aed9bf348f90d1b6cc",
    },
    DebPin {
        package: "libpopt0",
        version: "1.19+dfsg-1",
        sha256: "6f94b488255acd996254f775c77ff3956557c61f860a3c9caeaf65457554194f",
    },
    DebPin {
        package: "libargon2-1",
        version: "0~20171227-0.3+deb12u1",
        sha256: "4a8155b06270b88eed34d132acfc8ccc0b85499e1c4bfd7f31f8b199af42b1de",
    },
    DebPin {
        package: "libjson-c5",
        version: "0.16-2",
        sha256: "d0e1ed8637d1c26b9720f6057d6355f18378bba5cc2553e459d1632783c00d70",
    },
    DebPin {
        package: "libssl3",
        version: "3.0.22-1~deb12u2",
        sha256: "cb4784740daa9b3b0eaea2b444bbefa686794afbbf3d678d238c1fd9875f2efd",
    },
    DebPin {
        package: "libdevmapper1.02.1",
        version: "2:1.02.185-2",
        sha256: "aaa78ca236055fedccf637eacf7bda02bf1980b2db668dccd202b04d0d2cfe04",
    },
    DebPin {
        package: "libselinux1",
        version: "3.4-1+b6",
        sha256: "2b07f5287b9105f40158b56e4d70cc1652dac56a408f3507b4ab3d061eed425f",
    },
    // btrfs-progs: `mkfs.btrfs` formats the btrfs driver's store (a thin volume) and `btrfs`
    // makes its subvolumes, snapshots and qgroups (`layerstore --driver btrfs`); the libraries
    // they need beyond the ones above (DT_NEEDED: libudev, zlib, lzo2; libuuid, libblkid and
    // libzstd are already here).
    DebPin {
        package: "btrfs-progs",
        version: "6.2-1+deb12u2",
        sha256: "8b9f4223957c327ea355c66876014f8a0ba6c74964c237266442fffa02fbf62e",
    },
    DebPin {
        package: "libudev1",
        version: "252.39-1~deb12u2",
        sha256: "6f7e08f11c4809d2e5998c775f7b423ab5ec2ce0309494b4a2615037052245e2",
    },
    DebPin {
        package: "libpcre2-8-0",
        version: "10.42-1+deb12u2",
        sha256: "d2f7edfcc7689b9e0761c2742cc824ac86a20768bc5e8057818dc6875291fe76",
    },
    // Container networking (see `crate::net`): Debian's CNI plugins, the iptables-nft they
    // run (`xtables-nft-multi`), and its libraries beyond libc.
    DebPin {
        package: "containernetworking-plugins",
        version: "1.1.1+ds1-3+b5",
        sha256: "4cac8143474d1249b19f7b0e80b8d0daaa6dfdaa8bd514bc468d38d4a108099f",
    },
    DebPin {
        package: "iptables",
        version: "1.8.9-2",
        sha256: "2928d3ca6ca8a3dc3f423f6752822b1f3614a5ba609ff7806bcba4449ffe90e1",
    },
    DebPin {
        package: "libxtables12",
        version: "1.8.9-2",
        sha256: "cb841d66950a43af4a398625313d2f3da9065299c9738538de6c2c3495857040",
    },
    DebPin {
        package: "libnftnl11",
        version: "1.2.4-2",
        sha256: "9e619e1470a1915264e906020f3bfc046fd8458043b1342686d997b5078213af",
    },
    DebPin {
        package: "libmnl0",
        version: "1.0.4-3",
        sha256: "4581f42e3373cb72f9ea4e88163b17873afca614a6c6f54637e95aa75983ea7c",
    },
    DebPin {
        package: "zlib1g",
        version: "1:1.2.13.dfsg-1+deb12u1",
        sha256: "ad9f1ea0537a32c9eaecc619563a9db596a5dee33afce8393b1083f22d301e1d",
    },
    DebPin {
        package: "liblzo2-2",
        version: "2.10-2",
        sha256: "4f08e092c76e425295a498cd547dc9b8f6a595473f3020ab8c96309b29872636",
    },
    DebPin {
        package: "busybox-static",
        version: "1:1.35.0-4+deb12u1+b1",
        sha256: "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744",
    },
];

/// Kernel modules the appliance loads (dependencies are added from `.modinfo`), with the
/// parameters passed to `finit_module`. Built-in ones are skipped.
pub const MODULES: &[(&str, &str)] = &[
    ("virtio_pci", ""),
    ("virtio_mmio", ""),
    ("virtio_blk", ""),
    ("virtio_net", ""),
    ("virtio_console", ""),
    ("button", ""),
    ("evdev", ""),
    ("pvpanic_pci", ""),
    ("pvpanic_mmio", ""),
    // Two devices: one for the pool volume, one spare for re-attach/tests (default is 16).
    ("nbd", "nbds_max=2"),
    // The appliance's own store attaches through ublk (`/dev/ublkbN`) unless `lamina.attach=nbd`.
    ("ublk_drv", ""),
    ("xfs", ""),
    ("overlay", ""),
    // Encryption at rest: dm-crypt (dm-mod from `depends=`) and what LUKS2's default cipher
    // aes-xts-plain64 needs that is not built in (AES, ECB and CBC are): the xts template.
    // Nothing runs modprobe in the guest, so the kernel's request_module for "xts(aes)" would
    // fail. algif_skcipher (AF_ALG) lets cryptsetup decrypt key slots through the kernel's
    // crypto API instead of a temporary dm-crypt mapping.
    ("dm_crypt", ""),
    ("xts", ""),
    ("algif_skcipher", ""),
    // The btrfs driver's filesystem (`layerstore --driver btrfs`); its dependencies (xor,
    // raid6_pq, blake2b, ...) come from its `.modinfo`. After xfs, so it loads with the
    // background tail.
    ("btrfs", ""),
];

/// Kernel options the appliance relies on, checked against the package's `config-*`.
pub const REQUIRED_CONFIG: &[(&str, &[&str])] = &[
    ("CONFIG_DEVTMPFS", &["y"]),
    ("CONFIG_BLK_DEV_INITRD", &["y"]),
    ("CONFIG_PVH", &["y"]),
    ("CONFIG_SERIAL_8250_CONSOLE", &["y"]),
    ("CONFIG_UNIX", &["y"]),
    ("CONFIG_TMPFS", &["y"]),
    ("CONFIG_CRYPTO_CRC32C", &["y", "m"]),
    ("CONFIG_XFS_QUOTA", &["y"]),
    ("CONFIG_BLK_DEV_NBD", &["y", "m"]),
    ("CONFIG_BLK_DEV_UBLK", &["y", "m"]),
    ("CONFIG_IO_URING", &["y"]),
    ("CONFIG_XFS_FS", &["y", "m"]),
    ("CONFIG_OVERLAY_FS", &["y", "m"]),
    ("CONFIG_BTRFS_FS", &["y", "m"]),
    ("CONFIG_VIRTIO_CONSOLE", &["y", "m"]),
    ("CONFIG_BLK_DEV_DM", &["y", "m"]),
    ("CONFIG_DM_CRYPT", &["y", "m"]),
    ("CONFIG_CRYPTO_XTS", &["y", "m"]),
    ("CONFIG_CRYPTO_AES", &["y", "m"]),
    ("CONFIG_CRYPTO_USER_API_SKCIPHER", &["y", "m"]),
    ("CONFIG_KEYS", &["y"]),
];
