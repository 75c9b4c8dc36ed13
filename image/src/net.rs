//! Container networking in the image: Debian 12's CNI plugins (containernetworking-plugins
//! 1.1.1), the iptables they drive, and the kernel modules both need.
//!
//! ```text
//! usr/lib/cni/{bridge,host-local,portmap,loopback,firewall}   the plugins (Go, libc only)
//! usr/sbin/xtables-nft-multi                                  iptables over nf_tables
//! usr/sbin/iptables, ip6tables -> xtables-nft-multi            what the plugins exec
//! usr/lib/x86_64-linux-gnu/xtables/lib*.so                    the matches and targets they use
//! etc/lamina/modules.network                                  loaded by init on first use
//! ```
//!
//! Plugins 1.1.x have no nftables backend (portmap's came in 1.5): `bridge` (ipMasq),
//! `portmap` and `firewall` (backend `iptables`) run the `iptables` command through
//! go-iptables, which picks nft mode from `iptables --version`. Debian 12's `iptables` is
//! iptables-nft (update-alternatives' default), here linked straight to `xtables-nft-multi`
//! (no alternatives system in the initramfs); it translates rules into nf_tables, with
//! `nft_compat` carrying the xtables matches and targets it does not translate natively.

/// The plugins lamina's network configs use (plugins/main/bridge, ipam/host-local,
/// meta/portmap, main/loopback, meta/firewall upstream).
pub const PLUGINS: &[&str] = &["bridge", "host-local", "portmap", "loopback", "firewall"];

/// The xtables extensions the plugins' rules need, dlopened by iptables from
/// `XTABLES_LIBDIR` (so they are not in any DT_NEEDED): bridge's masquerade chain (comment,
/// MASQUERADE), portmap's DNAT chains (addrtype, multiport, tcp/udp, DNAT, MARK/mark,
/// MASQUERADE), firewall's forward chains (conntrack), and the standard targets.
pub const XTABLES: &[&str] = &[
    "libxt_standard.so",
    "libxt_comment.so",
    "libxt_mark.so",
    "libxt_MARK.so",
    "libxt_multiport.so",
    "libxt_addrtype.so",
    "libxt_conntrack.so",
    "libxt_MASQUERADE.so",
    "libxt_DNAT.so",
    "libxt_SNAT.so",
    "libxt_tcp.so",
    "libxt_udp.so",
    "libipt_icmp.so",
];

/// Where iptables looks for its extensions (Debian's build: `--with-xtlibdir`).
pub const XTABLES_DIR: &str = "usr/lib/x86_64-linux-gnu/xtables";

/// Names the plugins look up on `PATH` for iptables-nft.
pub const IPTABLES_LINKS: &[&str] = &["usr/sbin/iptables", "usr/sbin/ip6tables"];

/// Kernel modules for the plugins' work (dependencies come from `.modinfo`): the bridge and
/// veth pairs (bridge), nf_tables with the xtables compatibility layer and the NAT chain
/// type (iptables-nft), and the xtables matches and targets of the rules above. Init loads
/// them when the first container joins a network, not at boot.
pub const MODULES: &[&str] = &[
    "bridge",
    "veth",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "nft_ct",
    "xt_nat",
    "xt_MASQUERADE",
    "xt_mark",
    "xt_comment",
    "xt_multiport",
    "xt_addrtype",
    "xt_conntrack",
    "xt_tcpudp",
];

/// The module order file init reads when networking starts.
pub const MODULES_FILE: &str = "etc/lamina/modules.network";
