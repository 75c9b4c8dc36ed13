//! Pins of the benchmark-only programs in the `dm` image variant: Debian's `fio` and the
//! closure of its DT_NEEDED libraries (fio links the rbd, gfapi, rdma, pmem and nbd engines into
//! its binary, so the ceph, gluster, krb5, gnutls and icu libraries all load with it; pinned
//! 2026-11-23 from bookworm). Kept apart from [`crate::pins`] and the dm pins; a library the
//! default image already pins (liblzma5, libzstd1 for crun; libssl3, libargon2-1, libjson-c5,
//! libcryptsetup12 for cryptsetup) is not pinned again here.
//!
//! A library the closure needs and no pin provides is a build error naming it; a pin whose
//! package provides nothing the closure uses is caught by the variant's tests.

use crate::pins::DebPin;

/// `fio` first (the variant installs `usr/bin/fio` from it), then its libraries A–Z.
pub const FIO: &[DebPin] = &[
    DebPin {
        package: "fio",
        version: "3.33-3",
        sha256: "dc79dae895125512620fcd16465f1a19edec8f2d73736fe76a9fbf8195cfb745",
    },
    DebPin {
        package: "libacl1",
        version: "2.3.1-3",
        sha256: "8be9df5795114bfe90e2be3d208ef47a5edd3fc7b3e20d387a597486d444e5e2",
    },
    DebPin {
        package: "libaio1",
        version: "0.3.113-4",
        sha256: "d1476e4beab3d85f8a7d31de94c27472711ed3ef399ce70708e24b259426125b",
    },
    DebPin {
        package: "libboost-iostreams1.74.0",
        version: "1.74.0+ds1-21",
        sha256: "231d7e7a14f0ea88942f926f13f1bb3f49404201dee2229cb16d664f96902d86",
    },
    DebPin {
        package: "libboost-thread1.74.0",
        version: "1.74.0+ds1-21",
        sha256: "6fc1f2997cdb0ea76d786a10591ea00559ef663055675f574e406ff2b3bd8912",
    },
    DebPin {
        package: "libbz2-1.0",
        version: "1.0.8-5+b1",
        sha256: "54149da3f44b22d523b26b692033b84503d822cc5122fed606ea69cc83ca5aeb",
    },
    DebPin {
        package: "libcom-err2",
        version: "1.47.0-2+b2",
        sha256: "a2bac7015e78fbc0c504df3e441f3a22292f1d2d77f9ccda760057f3690e22f2",
    },
    DebPin {
        package: "libdaxctl1",
        version: "76.1-1",
        sha256: "af5f9ffe642ae25301eb88fdb2fa9e3c06dcfc5e131fbcee7575adf0adcc9abb",
    },
    DebPin {
        package: "libffi8",
        version: "3.4.4-1",
        sha256: "6d9f6c25c30efccce6d4bceaa48ea86c329a3432abb360a141f76ac223a4c34a",
    },
    DebPin {
        package: "libfmt9",
        version: "9.1.0+ds1-2",
        sha256: "c3d405b6eabb1a521b60a57509826707f0e6f92b41cdfaae06bf1d7c37da2166",
    },
    DebPin {
        package: "libgcc-s1",
        version: "12.2.0-14+deb12u1",
        sha256: "3016e62cb4b7cd8038822870601f5ed131befe942774d0f745622cc77d8a88f7",
    },
    DebPin {
        package: "libgfapi0",
        version: "10.3-5",
        sha256: "fa2695f5d3810c59236cc5c4aa8971009803101b9ac33876c05003dad941cee2",
    },
    DebPin {
        package: "libgfrpc0",
        version: "10.3-5",
        sha256: "91ee8563e38f22a6c4ad57d92971e9bf884d6f93602e6cc99c37ec6c3c41ca8c",
    },
    DebPin {
        package: "libgfxdr0",
        version: "10.3-5",
        sha256: "39f9e78fe0e94bd127d45013b9bdf7df7af98b2a8b3581fd286f10d657184fff",
    },
    DebPin {
        package: "libglusterfs0",
        version: "10.3-5",
        sha256: "eca3e24b0e04e262a1240faca637ed642a7ebb952131dc5ef562739b451e2b2d",
    },
    DebPin {
        package: "libgmp10",
        version: "2:6.2.1+dfsg1-1.1",
        sha256: "187aedef2ed763f425c1e523753b9719677633c7eede660401739e9c893482bd",
    },
    DebPin {
        package: "libgnutls30",
        version: "3.7.9-2+deb12u7",
        sha256: "30abec8c824feb1d2d7e9000a34083cccd19d139625e1b21547e3ac53b922f8e",
    },
    DebPin {
        package: "libgssapi-krb5-2",
        version: "1.20.1-2+deb12u5",
        sha256: "d8b87aea91b956b416c01a28c44ff6228315ae3b73de40acddac3dc5043607d2",
    },
    DebPin {
        package: "libhogweed6",
        version: "3.8.1-2",
        sha256: "ed8185c28b2cb519744a5a462dcd720d3b332c9b88a1d0002eac06dc8550cb94",
    },
    DebPin {
        package: "libibverbs1",
        version: "44.0-2",
        sha256: "35054815259fee46173240254246d03b673a5cd5c528aaac96fd15ac428a8d59",
    },
    DebPin {
        package: "libicu72",
        version: "72.1-3+deb12u1",
        sha256: "f7f6f99c6d7b025914df2447fc93e11d22c44c0c8bdd8b6f36691c9e7ddcef88",
    },
    DebPin {
        package: "libidn2-0",
        version: "2.3.3-1+b1",
        sha256: "d50716d5824083d667427817d506b45d3f59dc77e1ca52de000f3f62d4918afa",
    },
    DebPin {
        package: "libk5crypto3",
        version: "1.20.1-2+deb12u5",
        sha256: "7b6e47d15c5c9cdcd456137533d8308aeba608a54cec73b28bd59bfc4b54cf06",
    },
    DebPin {
        package: "libkeyutils1",
        version: "1.6.3-2",
        sha256: "cfac89e6a7a54ff3c6a4f843310e25efeddaa771baeae470bd98bd588c373563",
    },
    DebPin {
        package: "libkmod2",
        version: "30+20221128-1",
        sha256: "af63bbbfc15fbd1f254b15c393b3b95b18b18cc81348fc1b4f1c9c34b4d672d7",
    },
    DebPin {
        package: "libkrb5-3",
        version: "1.20.1-2+deb12u5",
        sha256: "c90801be09701af221b54dd502a59cb378b7284ff31e480738baca317d2f7653",
    },
    DebPin {
        package: "libkrb5support0",
        version: "1.20.1-2+deb12u5",
        sha256: "8b9c05f2d8d461a10d657b118f572af5bf8fd6c8f93dcef81e852c5ab0f428ab",
    },
    DebPin {
        package: "libnbd0",
        version: "1.14.2-1",
        sha256: "775d8a88ac1d3daf9cea723fb0faca07e6167a4bcd606af37e73eb8ec5eba009",
    },
    DebPin {
        package: "libndctl6",
        version: "76.1-1",
        sha256: "3654dd3a0a05fdc28af8bcd307109ec41a9ea92218bf29816ff467a8c5e7d57f",
    },
    DebPin {
        package: "libnettle8",
        version: "3.8.1-2",
        sha256: "45922e6e289ffd92f0f92d2bb9159e84236ff202d552a461bf10e5335b3f0261",
    },
    DebPin {
        package: "libnl-3-200",
        version: "3.7.0-0.2+b1",
        sha256: "d1fc3e9eb8e79b4c96b0a64c3d8c9e068ae2f665cab71bd19f417ffd0453a890",
    },
    DebPin {
        package: "libnl-route-3-200",
        version: "3.7.0-0.2+b1",
        sha256: "0fdcc425ae2982788c085c76a7cb0eda3e3db99d41bd1ce56082ee18e9f1e21f",
    },
    DebPin {
        package: "libnuma1",
        version: "2.0.16-1",
        sha256: "639e1ab6bd66ead40db8a22c332d7199679fa22db261cac34444eb8eb4c17dda",
    },
    DebPin {
        package: "libp11-kit0",
        version: "0.24.1-2",
        sha256: "251330faddbf013f060fcdb41f4b0c037c8a6e89ba7c09b04bfcc4e3f0807b22",
    },
    DebPin {
        package: "libpmem1",
        version: "1.12.1-2",
        sha256: "63ed00821aecdb5537b51b6f378cf571144d02ac3af2f95141bfa0e397359a76",
    },
    DebPin {
        package: "libpmemblk1",
        version: "1.12.1-2",
        sha256: "48a1a0726bb1d5bff18592522a6ad665b108ebb5bfe443eb9b402732b7451fe1",
    },
    DebPin {
        package: "librados2",
        version: "16.2.15+ds-0+deb12u2",
        sha256: "6f4fcfd10f9f6ce86d1ba637adea28f88d5887d1d4a579d4a22f87c1da70d38a",
    },
    DebPin {
        package: "librbd1",
        version: "16.2.15+ds-0+deb12u2",
        sha256: "858cac165993237937e8bea0257341b528552ac3bcee45dfc3c33659be42df75",
    },
    DebPin {
        package: "librdmacm1",
        version: "44.0-2",
        sha256: "16b18625834371d023b81477823074ea0d34c478d58dbef3f01107984f47d034",
    },
    DebPin {
        package: "libstdc++6",
        version: "12.2.0-14+deb12u1",
        sha256: "5cd3171216d4ab0fc911cfe9c35509bf2dd8f47761c43b7f6a4296701551a24d",
    },
    DebPin {
        package: "libtasn1-6",
        version: "4.19.0-2+deb12u1",
        sha256: "2c27c613b69be248d09432839ea3d3382f6ee27fabaa65987aa2d884cd00afda",
    },
    DebPin {
        package: "libtirpc3",
        version: "1.3.3+ds-1",
        sha256: "2a46d5a5e9486da11ffeff5740931740d6deae4f92cd6098df060dc5dff1e1c7",
    },
    DebPin {
        package: "libunistring2",
        version: "1.0-2",
        sha256: "d466bbfe011d764d793c1d9d777cad9c7cf65b938e11598f27408171ad95a951",
    },
    DebPin {
        package: "libxml2",
        version: "2.9.14+dfsg-1.3~deb12u6",
        sha256: "4460e39dda10a815881374217cde08474747cfa018358cd8612c14b390eff53b",
    },
];
