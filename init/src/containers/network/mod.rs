//! Container networks, Docker's way with the real CNI plugins ([`cni`]): a default network
//! `bridge`, user networks made by `network create`, an address per container from its
//! network's subnet (host-local), published ports on the guest's addresses (portmap).
//!
//! ```text
//! /var/lib/lamina/networks/NAME.json     a network's definition (outlives reboots)
//! /run/lamina/cni/ipam/NAME/             host-local's store: a file per address in use
//! /run/lamina/cni/hosts/NAME             the network's hosts file, bind-mounted read-only
//!                                        on every member's /etc/hosts
//! /run/lamina/cni/resolv.conf            the members' /etc/resolv.conf (QEMU's DNS)
//! /run/lamina/netns/CONTAINER            the container's namespace ([`netns`])
//! ```
//! Attachments live for one boot (in /run): a container joins its network when it starts
//! and leaves it (CNI DEL, which frees its address) when it stops for good or is removed.
//!
//! Name resolution: the plugins have none. Each network has one hosts file listing its
//! members, rewritten in place (same inode, so every bind mount sees it) whenever a member
//! joins or leaves. A file rather than a resolver in init: every libc reads /etc/hosts
//! (glibc's and musl's lookups, busybox's static glibc too) with no daemon to keep alive,
//! and nothing listens on the containers' networks. Other names go to QEMU's user-network
//! DNS (10.0.2.3) through the bridge's masquerading.

pub mod cni;
pub mod netns;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use self::cni::{Cni, NetConf, PortMap};
use super::error::{Kind, Result, StoreError};
use crate::reaper::Reaper;

pub const DIR: &str = "/var/lib/lamina/networks";
pub const RUN: &str = "/run/lamina/cni";
/// Docker's default network.
pub const DEFAULT: &str = "bridge";
/// No network: the container's own namespace with only `lo` (Docker's `none`).
pub const NONE: &str = "none";
/// QEMU user networking's built-in DNS server (`-netdev user`, `dns=`, default x.x.x.3).
const GUEST_DNS: &str = "10.0.2.3";
/// The guest's own user network, which no container network may overlap.
const GUEST_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 0, 2, 0), 24);

/// A network's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub id: String,
    pub subnet: String,
    pub gateway: Ipv4Addr,
    /// The Linux bridge (at most 15 bytes: IFNAMSIZ).
    pub bridge: String,
    pub created: u64,
}

/// A container on a network, for this boot.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub network: String,
    pub ip: Ipv4Addr,
    pub ports: Vec<PortMap>,
    pub netns: PathBuf,
    /// The ADD result, given back to DEL.
    result: Value,
}

/// A `--subnet` that is not a network in CIDR form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid subnet {input:?}: {why}")]
pub struct SubnetError {
    pub input: String,
    pub why: String,
}

/// `a.b.c.d/p` with the host bits clear.
pub fn parse_subnet(s: &str) -> std::result::Result<(Ipv4Addr, u8), SubnetError> {
    let bad = |why: &str| SubnetError { input: s.into(), why: why.into() };
    let (a, p) = s.split_once('/').ok_or_else(|| bad("want a.b.c.d/prefix"))?;
    let a: Ipv4Addr = a.parse().map_err(|_| bad("not an IPv4 address"))?;
    let p: u8 =
        p.parse().ok().filter(|p| (8..=30).contains(p)).ok_or_else(|| bad("prefix 8-30"))?;
    if u32::from(a) & !mask(p) != 0 {
        return Err(bad(&format!("host bits set (the network is {})", net_addr(a, p))));
    }
    Ok((a, p))
}

fn mask(p: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(p)).unwrap_or(0)
}

fn net_addr(a: Ipv4Addr, p: u8) -> String {
    format!("{}/{p}", Ipv4Addr::from(u32::from(a) & mask(p)))
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let m = mask(a.1.min(b.1));
    u32::from(a.0) & m == u32::from(b.0) & m
}

/// Docker's default address pools for user networks: 172.18.0.0/16 … 172.31.0.0/16, then
/// 192.168.0.0/20 … 192.168.240.0/20; the first that overlaps nothing in `used`.
pub fn free_subnet(used: &[(Ipv4Addr, u8)]) -> Option<(Ipv4Addr, u8)> {
    let pools = (18..=31u8)
        .map(|b| (Ipv4Addr::new(172, b, 0, 0), 16))
        .chain((0..16u8).map(|i| (Ipv4Addr::new(192, 168, i * 16, 0), 20)));
    pools.into_iter().find(|c| !overlaps(*c, GUEST_NET) && !used.iter().any(|u| overlaps(*c, *u)))
}

/// A network's hosts file: localhost, then each member by name.
pub fn hosts_file(members: &[(String, Ipv4Addr)]) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (name, ip) in members {
        s.push_str(&format!("{ip}\t{name}\n"));
    }
    s
}

/// Points an OCI config at the container's network: its namespace, and the network's hosts
/// file and resolv.conf bound read-only over the image's.
pub fn apply_oci(config: &mut Value, netns: &Path, hosts: &Path, resolv: &Path) {
    if let Some(ns) = config["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "network");
        ns.push(json!({"type": "network", "path": netns}));
    }
    if let Some(m) = config["mounts"].as_array_mut() {
        for (dest, src) in [("/etc/hosts", hosts), ("/etc/resolv.conf", resolv)] {
            m.retain(|x| x["destination"] != dest);
            m.push(json!({"destination": dest, "type": "bind", "source": src,
                          "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}));
        }
    }
}

fn not_found(name: &str) -> StoreError {
    // Docker's wording.
    StoreError::new(Kind::NotFound, format!("network {name} not found"))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Every network and attachment.
pub struct Networks {
    dir: PathBuf,
    run: PathBuf,
    defs: Mutex<BTreeMap<String, Network>>,
    attached: Mutex<BTreeMap<String, Attachment>>,
    /// Held through each attach and detach, so a `rm` racing the exit's detach returns
    /// only once the address is free.
    ops: Mutex<()>,
    /// The networking modules, loaded on first use; the error of a failed load.
    modules: Mutex<Option<Result<()>>>,
}

impl std::fmt::Debug for Networks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Networks").field("dir", &self.dir).finish()
    }
}

impl Networks {
    /// Loads the definitions under `dir` and makes the default network when missing.
    pub fn open(dir: &Path, run: &Path) -> Networks {
        let _ = std::fs::create_dir_all(dir);
        let mut defs = BTreeMap::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let n: Option<Network> =
                std::fs::read(e.path()).ok().and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(n) = n {
                defs.insert(n.name.clone(), n);
            }
        }
        let n = Networks {
            dir: dir.into(),
            run: run.into(),
            defs: Mutex::new(defs),
            attached: Mutex::new(BTreeMap::new()),
            ops: Mutex::new(()),
            modules: Mutex::new(None),
        };
        if !n.lock().contains_key(DEFAULT) {
            // Docker's default bridge: 172.17.0.0/16 (docker0 here is lamina0).
            let d = Network {
                name: DEFAULT.into(),
                id: id_for(DEFAULT, 0),
                subnet: "172.17.0.0/16".into(),
                gateway: Ipv4Addr::new(172, 17, 0, 1),
                bridge: "lamina0".into(),
                created: now(),
            };
            let _ = n.save(&d);
            n.lock().insert(d.name.clone(), d);
        }
        n
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Network>> {
        self.defs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn att(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Attachment>> {
        self.attached.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, n: &Network) -> Result<()> {
        let p = self.dir.join(format!("{}.json", n.name));
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(n).unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, &p))
            .map_err(|e| StoreError::io(p.display(), e))
    }

    /// The definition of `name`, or Docker's "network NAME not found".
    pub fn get(&self, name: &str) -> Result<Network> {
        self.lock().get(name).cloned().ok_or_else(|| not_found(name))
    }

    /// `network create NAME [--subnet CIDR]`.
    pub fn create(&self, name: &str, subnet: Option<&str>) -> Result<Value> {
        super::spec::check_name(name).map_err(|e| StoreError::new(Kind::Invalid, e.to_string()))?;
        let mut defs = self.lock();
        if defs.contains_key(name) || name == NONE || name == "host" {
            return Err(StoreError::new(
                Kind::Conflict,
                format!("network with name {name} already exists"),
            ));
        }
        let used: Vec<(Ipv4Addr, u8)> =
            defs.values().filter_map(|n| parse_subnet(&n.subnet).ok()).collect();
        let net = match subnet {
            Some(s) => {
                let c =
                    parse_subnet(s).map_err(|e| StoreError::new(Kind::Invalid, e.to_string()))?;
                if let Some(o) =
                    defs.values().find(|n| parse_subnet(&n.subnet).is_ok_and(|u| overlaps(c, u)))
                {
                    return Err(StoreError::new(
                        Kind::Conflict,
                        format!("invalid pool request: Pool overlaps with other one on this address space ({} of network {})", o.subnet, o.name),
                    ));
                }
                if overlaps(c, GUEST_NET) {
                    return Err(StoreError::new(
                        Kind::Conflict,
                        format!("subnet {s} overlaps the guest's own network 10.0.2.0/24"),
                    ));
                }
                c
            }
            None => free_subnet(&used).ok_or_else(|| {
                StoreError::new(
                    Kind::Unavailable,
                    "no free subnet in the default pools: give --subnet",
                )
            })?,
        };
        let created = now();
        let id = id_for(name, created);
        let n = Network {
            name: name.into(),
            bridge: format!("br-{}", &id[..12]),
            id,
            subnet: net_addr(net.0, net.1),
            gateway: Ipv4Addr::from(u32::from(net.0) + 1),
            created,
        };
        self.save(&n)?;
        defs.insert(n.name.clone(), n.clone());
        Ok(json!({"name": n.name, "id": n.id, "subnet": n.subnet}))
    }

    /// `network ls`.
    pub fn list(&self) -> Value {
        let att = self.att();
        Value::Array(
            self.lock()
                .values()
                .map(|n| {
                    let members = att.values().filter(|a| a.network == n.name).count();
                    json!({"name": n.name, "id": n.id, "driver": "bridge", "scope": "local",
                           "subnet": n.subnet, "gateway": n.gateway, "bridge": n.bridge,
                           "containers": members, "created": n.created})
                })
                .collect(),
        )
    }

    /// `network inspect`: the definition, its members' addresses, and the addresses
    /// host-local's store holds.
    pub fn inspect(&self, name: &str) -> Result<Value> {
        let n = self.get(name)?;
        let members: BTreeMap<String, String> = self
            .att()
            .iter()
            .filter(|(_, a)| a.network == name)
            .map(|(c, a)| (c.clone(), a.ip.to_string()))
            .collect();
        Ok(json!({"name": n.name, "id": n.id, "driver": "bridge", "subnet": n.subnet,
                  "gateway": n.gateway, "bridge": n.bridge, "containers": members,
                  "ipam": self.ipam_allocated(name)}))
    }

    /// The addresses host-local has on file for `network` (its files are named by address).
    pub fn ipam_allocated(&self, network: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.run.join("ipam").join(network))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|f| f.parse::<Ipv4Addr>().is_ok())
            .collect();
        v.sort();
        v
    }

    /// `network rm`: refused for the default network and while a container uses it.
    pub fn remove(&self, name: &str, users: &[String]) -> Result<Value> {
        let n = self.get(name)?;
        if name == DEFAULT {
            return Err(StoreError::new(
                Kind::Conflict,
                format!("{name} is a pre-defined network and cannot be removed"),
            ));
        }
        if !users.is_empty() {
            return Err(StoreError::new(
                Kind::Conflict,
                format!(
                    "error while removing network: network {name} id {} has active endpoints ({})",
                    n.id,
                    users.join(", ")
                ),
            ));
        }
        let p = self.dir.join(format!("{name}.json"));
        std::fs::remove_file(&p).map_err(|e| StoreError::io(p.display(), e))?;
        self.lock().remove(name);
        let _ = std::fs::remove_file(self.hosts(name));
        Ok(json!({ "removed": name }))
    }

    fn hosts(&self, network: &str) -> PathBuf {
        self.run.join("hosts").join(network)
    }

    fn resolv(&self) -> PathBuf {
        self.run.join("resolv.conf")
    }

    /// Rewrites a network's hosts file in place (bind mounts hold the inode).
    fn write_hosts(&self, network: &str) -> Result<()> {
        let members: Vec<(String, Ipv4Addr)> = self
            .att()
            .iter()
            .filter(|(_, a)| a.network == network)
            .map(|(c, a)| (c.clone(), a.ip))
            .collect();
        let p = self.hosts(network);
        let text = hosts_file(&members);
        std::fs::create_dir_all(self.run.join("hosts"))
            .and_then(|()| {
                use std::io::Write;
                let mut f =
                    std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&p)?;
                f.write_all(text.as_bytes())
            })
            .map_err(|e| StoreError::io(p.display(), e))
    }

    /// Loads the networking modules once (`/etc/lamina/modules.network`).
    fn load_modules(&self) -> Result<()> {
        let mut m = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        let r = m.get_or_insert_with(|| {
            let text = std::fs::read_to_string("/etc/lamina/modules.network")
                .map_err(|e| StoreError::io("/etc/lamina/modules.network", e))?;
            let lines = crate::boot::parse_module_order(&text);
            let failed: Vec<String> = crate::boot::load_modules(&crate::boot::RealKernel, &lines)
                .into_iter()
                .filter_map(|r| match r.outcome {
                    crate::boot::ModuleOutcome::Failed(e) => Some(format!("{}: {e}", r.name)),
                    _ => None,
                })
                .collect();
            if failed.is_empty() {
                Ok(())
            } else {
                Err(StoreError::new(
                    Kind::Io,
                    format!("networking modules failed to load: {}", failed.join(", ")),
                ))
            }
        });
        r.clone()
    }

    /// Refuses a host port another attached container publishes (Docker's message).
    pub fn check_ports(&self, container: &str, ports: &[PortMap]) -> Result<()> {
        let att = self.att();
        for p in ports {
            let taken = att.iter().any(|(c, a)| {
                c != container
                    && a.ports
                        .iter()
                        .any(|q| q.host_port == p.host_port && q.protocol == p.protocol)
            });
            if taken {
                return Err(StoreError::new(
                    Kind::Conflict,
                    format!("Bind for 0.0.0.0:{} failed: port is already allocated", p.host_port),
                ));
            }
        }
        Ok(())
    }

    /// Joins `container` to `network` (kept when it already is): namespace, CNI ADD, hosts.
    /// Returns (namespace, hosts file, resolv.conf) for its OCI config.
    pub fn attach(
        &self,
        reaper: &Reaper,
        container: &str,
        network: &str,
        ports: &[PortMap],
    ) -> Result<(PathBuf, PathBuf, PathBuf)> {
        let _op = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.get(network)?;
        if let Some(a) = self.att().get(container) {
            return Ok((a.netns.clone(), self.hosts(&a.network), self.resolv()));
        }
        self.check_ports(container, ports)?;
        let t = std::time::Instant::now();
        self.load_modules()?;
        let modules = t.elapsed();
        let resolv = self.resolv();
        std::fs::create_dir_all(&self.run)
            .and_then(|()| std::fs::write(&resolv, format!("nameserver {GUEST_DNS}\n")))
            .map_err(|e| StoreError::io(resolv.display(), e))?;
        let ns = netns::create(container).map_err(|e| StoreError::io("netns", e))?;
        let list = self.conflist(&n);
        let cni = Cni { reaper, plugin_dir: cni::PLUGIN_DIR.into() };
        let nsp = ns.to_string_lossy();
        let t = std::time::Instant::now();
        let result = match cni.add(&list, container, &nsp, ports) {
            Ok(r) => r,
            Err(e) => {
                // What the plugins before the failing one did is undone (SPEC.md: a failed
                // ADD is followed by a DEL).
                let _ = cni.del(&list, container, &nsp, None, ports);
                netns::remove(container);
                return Err(StoreError::new(Kind::Io, e.to_string()));
            }
        };
        let Some(ip) = cni::result_ipv4(&result) else {
            let _ = cni.del(&list, container, &nsp, Some(&result), ports);
            netns::remove(container);
            return Err(StoreError::new(
                Kind::Io,
                format!("CNI ADD for {container}: no IPv4 address in the result"),
            ));
        };
        self.att().insert(
            container.into(),
            Attachment {
                network: network.into(),
                ip,
                ports: ports.to_vec(),
                netns: ns.clone(),
                result,
            },
        );
        self.write_hosts(network)?;
        crate::say(&format!(
            "container {container}: {ip} on network {network} (CNI ADD {:.1}s{})",
            t.elapsed().as_secs_f64(),
            if modules.as_millis() > 50 {
                format!(", modules {:.1}s", modules.as_secs_f64())
            } else {
                String::new()
            }
        ));
        Ok((ns, self.hosts(network), resolv))
    }

    /// The CNI conflist of network `n`, with host-local's addresses kept under this run dir.
    fn conflist(&self, n: &Network) -> serde_json::Value {
        let ipam = self.run.join("ipam");
        cni::conflist(&NetConf {
            name: &n.name,
            bridge: &n.bridge,
            subnet: &n.subnet,
            gateway: n.gateway,
            ipam_dir: &ipam.to_string_lossy(),
        })
    }

    /// Takes `container` off its network: CNI DEL (host-local frees its address), the
    /// namespace goes, the hosts file is rewritten. Nothing when it is not attached.
    pub fn detach(&self, reaper: &Reaper, container: &str) -> Result<()> {
        let _op = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let Some(a) = self.att().remove(container) else { return Ok(()) };
        let del = match self.get(&a.network) {
            Ok(n) => {
                let list = self.conflist(&n);
                let cni = Cni { reaper, plugin_dir: cni::PLUGIN_DIR.into() };
                cni.del(&list, container, &a.netns.to_string_lossy(), Some(&a.result), &a.ports)
                    .map_err(|e| StoreError::new(Kind::Io, e.to_string()))
            }
            Err(e) => Err(e),
        };
        netns::remove(container);
        let hosts = self.write_hosts(&a.network);
        del.and(hosts)
    }

    /// The network and address of an attached container.
    pub fn address(&self, container: &str) -> Option<(String, Ipv4Addr)> {
        self.att().get(container).map(|a| (a.network.clone(), a.ip))
    }
}

/// A network id: 64 hex digits like Docker's, from the name and the creation time.
fn id_for(name: &str, created: u64) -> String {
    use std::hash::{Hash, Hasher};
    let mut out = String::new();
    for i in 0..4u8 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (name, created, i).hash(&mut h);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_checked_and_allocated_from_dockers_pools() {
        assert_eq!(parse_subnet("172.20.0.0/16"), Ok((Ipv4Addr::new(172, 20, 0, 0), 16)));
        let e = parse_subnet("172.20.0.1/16").unwrap_err().to_string();
        assert!(e.contains("host bits set") && e.contains("172.20.0.0/16"), "{e}");
        let why = |s: &str| parse_subnet(s).unwrap_err().why;
        assert!(why("172.20.0.0").contains("a.b.c.d/prefix"));
        assert!(why("172.20.0.0/31").contains("prefix 8-30"));
        assert!(why("300.1.0.0/16").contains("not an IPv4"));
        let used = [(Ipv4Addr::new(172, 17, 0, 0), 16), (Ipv4Addr::new(172, 18, 0, 0), 16)];
        assert_eq!(free_subnet(&used), Some((Ipv4Addr::new(172, 19, 0, 0), 16)));
        // A /8 over all of 172.x leaves only the 192.168 pools.
        assert_eq!(
            free_subnet(&[(Ipv4Addr::new(172, 0, 0, 0), 8)]),
            Some((Ipv4Addr::new(192, 168, 0, 0), 20))
        );
        assert!(overlaps((Ipv4Addr::new(10, 0, 0, 0), 8), GUEST_NET));
        assert!(!overlaps((Ipv4Addr::new(10, 1, 0, 0), 16), GUEST_NET));
    }

    #[test]
    fn hosts_file_lists_localhost_then_members() {
        let h = hosts_file(&[
            ("web".into(), Ipv4Addr::new(172, 18, 0, 2)),
            ("client".into(), Ipv4Addr::new(172, 18, 0, 3)),
        ]);
        assert_eq!(
            h,
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             172.18.0.2\tweb\n172.18.0.3\tclient\n"
        );
    }

    #[test]
    fn oci_config_joins_the_namespace_and_binds_hosts_and_resolv() {
        let mut c = json!({
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}]}
        });
        apply_oci(
            &mut c,
            Path::new("/run/lamina/netns/web"),
            Path::new("/run/lamina/cni/hosts/n"),
            Path::new("/run/lamina/cni/resolv.conf"),
        );
        let ns = c["linux"]["namespaces"].as_array().unwrap();
        assert_eq!(ns.iter().filter(|n| n["type"] == "network").count(), 1);
        assert!(ns.contains(&json!({"type": "network", "path": "/run/lamina/netns/web"})));
        let m = c["mounts"].as_array().unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[1]["destination"], "/etc/hosts");
        assert_eq!(m[1]["source"], "/run/lamina/cni/hosts/n");
        assert_eq!(m[2]["destination"], "/etc/resolv.conf");
        assert!(m[1]["options"].as_array().unwrap().contains(&json!("ro")));
    }

    #[test]
    fn networks_are_created_listed_and_removed_like_dockers() {
        let d = tempfile::tempdir().unwrap();
        let nets = Networks::open(&d.path().join("defs"), &d.path().join("run"));
        assert!(d.path().join("defs/bridge.json").is_file(), "the default network is made");
        let v = nets.create("appnet", None).unwrap();
        assert_eq!(v["subnet"], "172.18.0.0/16");
        let n = nets.get("appnet").unwrap();
        assert_eq!(n.gateway, Ipv4Addr::new(172, 18, 0, 1));
        assert!(n.bridge.starts_with("br-") && n.bridge.len() == 15, "{}", n.bridge);
        let e = nets.create("appnet", None).unwrap_err();
        assert_eq!(
            (e.kind, e.msg.as_str()),
            (Kind::Conflict, "network with name appnet already exists")
        );
        let e = nets.create("other", Some("172.18.5.0/24")).unwrap_err();
        assert!(e.msg.contains("Pool overlaps") && e.msg.contains("appnet"), "{e}");
        assert!(nets.create("x", Some("10.0.0.0/8")).unwrap_err().msg.contains("10.0.2.0/24"));
        assert_eq!(nets.create("bad/name", None).unwrap_err().kind, Kind::Invalid);
        let names: Vec<String> = nets
            .list()
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["appnet", "bridge"]);
        let e = nets.remove("appnet", &["web".into()]).unwrap_err();
        assert_eq!(e.kind, Kind::Conflict);
        assert!(e.msg.contains("has active endpoints (web)"), "{e}");
        let e = nets.remove("bridge", &[]).unwrap_err();
        assert!(e.msg.contains("pre-defined network"), "{e}");
        let e = nets.remove("nosuch", &[]).unwrap_err();
        assert_eq!((e.kind, e.msg.as_str()), (Kind::NotFound, "network nosuch not found"));
        nets.remove("appnet", &[]).unwrap();
        assert!(!d.path().join("defs/appnet.json").exists());
        // Definitions outlive a reboot.
        nets.create("kept", Some("192.168.7.0/24")).unwrap();
        let again = Networks::open(&d.path().join("defs"), &d.path().join("run"));
        assert_eq!(again.get("kept").unwrap().subnet, "192.168.7.0/24");
        assert_eq!(again.inspect("kept").unwrap()["ipam"], json!([]));
    }
}
