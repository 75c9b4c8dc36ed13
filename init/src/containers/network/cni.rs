//! The CNI runtime side, as the CNI specification (SPEC.md, version 1.0.0) and libcni
//! (`libcni/api.go`) describe it: a network is a configuration list whose plugins run in
//! order for ADD and in reverse for DEL. Each plugin is an executable found on `CNI_PATH`,
//! called with `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME` and `CNI_PATH` in
//! its environment and its configuration on stdin; it prints its result (or an error object)
//! on stdout. Between plugins the runtime passes the previous result as `prevResult`, and
//! the values of the capabilities a plugin declares (here `portMappings`) under
//! `runtimeConfig`; DEL gets the cached ADD result as `prevResult`.
//!
//! Rendering the configs is pure ([`conflist`], [`plugin_config`]); [`Cni`] runs the plugins
//! through init's reaper (PID 1 reaps every child, so a plugin's exit must come from it).

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::reaper::{Exit, Reaper};

/// The spec version lamina's configs are written in (plugins 1.1.x support it).
pub const CNI_VERSION: &str = "1.0.0";
/// Debian's plugin directory.
pub const PLUGIN_DIR: &str = "/usr/lib/cni";
/// How long one plugin may take (bridge and portmap run iptables several times; TCG is slow).
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// One `-p HOSTPORT:PORT[/PROTO]`, in the shape of CNI's `portMappings` capability
/// (CONVENTIONS.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMap {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("invalid port mapping {0:?} (want HOSTPORT:PORT[/tcp|/udp])")]
    Shape(String),
    #[error("invalid port {port:?} in {spec:?} (1-65535)")]
    Port { spec: String, port: String },
    #[error("invalid protocol {proto:?} in {spec:?} (tcp or udp)")]
    Proto { spec: String, proto: String },
}

impl PortMap {
    /// Docker's `-p HOSTPORT:CONTAINERPORT[/PROTO]` (no host IP, no ranges).
    pub fn parse(spec: &str) -> Result<PortMap, PortError> {
        let (ports, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
        if proto != "tcp" && proto != "udp" {
            return Err(PortError::Proto { spec: spec.into(), proto: proto.into() });
        }
        let (h, c) = ports.split_once(':').ok_or_else(|| PortError::Shape(spec.into()))?;
        let port = |p: &str| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(PortError::Port { spec: spec.into(), port: p.into() }),
        };
        Ok(PortMap { host_port: port(h)?, container_port: port(c)?, protocol: proto.into() })
    }
}

/// What a network is made of, as far as its CNI configuration goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf<'a> {
    pub name: &'a str,
    pub bridge: &'a str,
    pub subnet: &'a str,
    pub gateway: Ipv4Addr,
    /// host-local's store: one file per allocated address under `DIR/NAME/`.
    pub ipam_dir: &'a str,
}

/// The network's configuration list: a Linux bridge with the gateway address and
/// masquerading (bridge), addresses from the subnet (host-local), published ports
/// (portmap), and the forward rules that let the containers' traffic through (firewall).
pub fn conflist(n: &NetConf<'_>) -> Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": n.name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": n.bridge,
                "isGateway": true,
                "ipMasq": true,
                // A container can reach its own published port through the guest's address.
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": n.subnet, "gateway": n.gateway.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": n.ipam_dir
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "firewall", "backend": "iptables"}
        ]
    })
}

/// The loopback plugin's config (CNI_IFNAME `lo`): brings `lo` up in the namespace.
pub fn loopback() -> Value {
    json!({"cniVersion": CNI_VERSION, "name": "lo", "type": "loopback"})
}

/// One plugin's stdin, as libcni's `buildOneConfig` makes it: the plugin's object with the
/// list's `name` and `cniVersion`, `prevResult` when there is one, and `runtimeConfig` with
/// the values of the capabilities the plugin declares.
pub fn plugin_config(
    list: &Value,
    plugin: &Value,
    prev: Option<&Value>,
    ports: &[PortMap],
) -> Value {
    let mut c = plugin.clone();
    c["name"] = list["name"].clone();
    c["cniVersion"] = list["cniVersion"].clone();
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    if plugin["capabilities"]["portMappings"] == true {
        c["runtimeConfig"] = json!({ "portMappings": ports });
    }
    c
}

/// The first IPv4 address of an ADD result (`ips[].address`, CIDR form).
pub fn result_ipv4(result: &Value) -> Option<Ipv4Addr> {
    result["ips"]
        .as_array()?
        .iter()
        .find_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
}

/// The message of a plugin's error object (SPEC.md "Error": code, msg, details), or its
/// output as it is.
pub fn plugin_error(stdout: &str, stderr: &str) -> String {
    match serde_json::from_str::<Value>(stdout) {
        Ok(v) if v["msg"].is_string() => {
            let mut m = format!("{} (code {})", v["msg"].as_str().unwrap_or(""), v["code"]);
            if let Some(d) = v["details"].as_str().filter(|d| !d.is_empty()) {
                m.push_str(&format!(": {d}"));
            }
            m
        }
        _ => format!("{}{}", stdout.trim(), stderr.trim()),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("CNI {command} {plugin} for {container}: {msg}")]
pub struct CniError {
    pub command: &'static str,
    pub plugin: String,
    pub container: String,
    pub msg: String,
}

/// Runs plugins for containers.
pub struct Cni<'a> {
    pub reaper: &'a Reaper,
    pub plugin_dir: PathBuf,
}

impl Cni<'_> {
    /// Runs one plugin; its stdout parsed as JSON (`null` when it printed nothing, as DEL may).
    pub fn exec(
        &self,
        command: &'static str,
        container: &str,
        netns: &str,
        ifname: &str,
        config: &Value,
    ) -> Result<Value, CniError> {
        let plugin = config["type"].as_str().unwrap_or("").to_owned();
        let err = |msg: String| CniError {
            command,
            plugin: plugin.clone(),
            container: container.into(),
            msg,
        };
        let mut s = self
            .reaper
            .spawn(
                Command::new(self.plugin_dir.join(&plugin))
                    .env_clear()
                    .env("CNI_COMMAND", command)
                    .env("CNI_CONTAINERID", container)
                    .env("CNI_NETNS", netns)
                    .env("CNI_IFNAME", ifname)
                    .env("CNI_PATH", &self.plugin_dir)
                    // go-iptables looks `iptables` up on PATH.
                    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped()),
            )
            .map_err(|e| {
                err(format!("cannot run {}: {e}", self.plugin_dir.join(&plugin).display()))
            })?;
        if let Some(mut stdin) = s.child.stdin.take() {
            let _ = stdin.write_all(config.to_string().as_bytes());
        }
        let mut stderr = s.child.stderr.take();
        let errs = std::thread::spawn(move || {
            let mut t = String::new();
            if let Some(e) = stderr.as_mut() {
                let _ = e.read_to_string(&mut t);
            }
            t
        });
        let mut out = String::new();
        if let Some(mut o) = s.child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        let errtext = errs.join().unwrap_or_default();
        // Reap while waiting: init's main loop may be gone (shutdown).
        let t = Instant::now();
        let exit = loop {
            match s.exit.recv_timeout(Duration::from_millis(50)) {
                Ok(x) => break x,
                Err(_) if t.elapsed() > PLUGIN_TIMEOUT => {
                    let _ = s.child.kill();
                    return Err(err(format!("no exit within {PLUGIN_TIMEOUT:?}")));
                }
                Err(_) => {
                    let _ = self.reaper.reap();
                }
            }
        };
        if exit != Exit::Code(0) {
            return Err(err(plugin_error(&out, &errtext)));
        }
        if out.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&out).map_err(|e| err(format!("result is not JSON ({e}): {out}")))
    }

    /// ADD of a whole list into `eth0` (after `lo`); the last plugin's result.
    pub fn add(
        &self,
        list: &Value,
        container: &str,
        netns: &str,
        ports: &[PortMap],
    ) -> Result<Value, CniError> {
        self.exec("ADD", container, netns, "lo", &loopback())?;
        let mut prev: Option<Value> = None;
        for p in list["plugins"].as_array().into_iter().flatten() {
            let cfg = plugin_config(list, p, prev.as_ref(), ports);
            let r = self.exec("ADD", container, netns, "eth0", &cfg)?;
            // A plugin that prints nothing passes the previous result on.
            if !r.is_null() {
                prev = Some(r);
            }
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// DEL of a whole list, in reverse, each plugin with the cached ADD result; every
    /// plugin runs even when one fails (the first error is returned).
    pub fn del(
        &self,
        list: &Value,
        container: &str,
        netns: &str,
        cached: Option<&Value>,
        ports: &[PortMap],
    ) -> Result<(), CniError> {
        let mut first = None;
        for p in list["plugins"].as_array().into_iter().flatten().rev() {
            let cfg = plugin_config(list, p, cached.filter(|c| !c.is_null()), ports);
            if let Err(e) = self.exec("DEL", container, netns, "eth0", &cfg) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf() -> NetConf<'static> {
        NetConf {
            name: "web",
            bridge: "br-0123456789ab",
            subnet: "172.18.0.0/16",
            gateway: Ipv4Addr::new(172, 18, 0, 1),
            ipam_dir: "/run/lamina/cni/ipam",
        }
    }

    #[test]
    fn conflist_chains_bridge_portmap_firewall() {
        let l = conflist(&conf());
        assert_eq!(l["cniVersion"], "1.0.0");
        let types: Vec<&str> =
            l["plugins"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["bridge", "portmap", "firewall"]);
        let b = &l["plugins"][0];
        assert_eq!(b["bridge"], "br-0123456789ab");
        assert_eq!(b["isGateway"], true);
        assert_eq!(b["ipMasq"], true);
        assert_eq!(b["ipam"]["type"], "host-local");
        assert_eq!(b["ipam"]["ranges"][0][0]["subnet"], "172.18.0.0/16");
        assert_eq!(b["ipam"]["ranges"][0][0]["gateway"], "172.18.0.1");
        assert_eq!(b["ipam"]["dataDir"], "/run/lamina/cni/ipam");
        assert_eq!(l["plugins"][2]["backend"], "iptables");
    }

    #[test]
    fn plugin_config_injects_name_version_prev_result_and_capabilities() {
        let l = conflist(&conf());
        let ports = [PortMap::parse("8080:80").unwrap()];
        let bridge = plugin_config(&l, &l["plugins"][0], None, &ports);
        assert_eq!(bridge["name"], "web");
        assert_eq!(bridge["cniVersion"], "1.0.0");
        assert!(bridge.get("prevResult").is_none());
        assert!(bridge.get("runtimeConfig").is_none(), "bridge declares no capability");
        let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "172.18.0.2/16"}]});
        let pm = plugin_config(&l, &l["plugins"][1], Some(&prev), &ports);
        assert_eq!(pm["prevResult"], prev);
        assert_eq!(
            pm["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
        );
        assert_eq!(result_ipv4(&prev), Some(Ipv4Addr::new(172, 18, 0, 2)));
        assert_eq!(result_ipv4(&json!({"ips": []})), None);
    }

    #[test]
    fn ports_parse_as_docker_writes_them() {
        assert_eq!(
            PortMap::parse("8080:80/udp").unwrap(),
            PortMap { host_port: 8080, container_port: 80, protocol: "udp".into() }
        );
        assert_eq!(PortMap::parse("80").unwrap_err(), PortError::Shape("80".into()));
        assert!(matches!(PortMap::parse("0:80"), Err(PortError::Port { port, .. }) if port == "0"));
        assert!(matches!(
            PortMap::parse("8080:70000"),
            Err(PortError::Port { port, .. }) if port == "70000"
        ));
        assert!(matches!(
            PortMap::parse("1:2/sctp"),
            Err(PortError::Proto { proto, .. }) if proto == "sctp"
        ));
        let e = PortMap::parse("x:80").unwrap_err().to_string();
        assert!(e.contains("\"x\"") && e.contains("1-65535"), "{e}");
    }

    #[test]
    fn plugin_errors_show_msg_and_details() {
        let out = r#"{"cniVersion":"1.0.0","code":11,"msg":"failed to allocate","details":"no IP addresses available in range set"}"#;
        assert_eq!(
            plugin_error(out, ""),
            "failed to allocate (code 11): no IP addresses available in range set"
        );
        assert_eq!(plugin_error("", "panic: boom\n"), "panic: boom");
    }
}
