//! What a container is asked to be (`lamina run`'s flags) and what it is now, as they are
//! kept on the store's XFS. Pure types and the OCI config changes they make.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Billionths of a CPU in one CPU.
pub const NANO: u64 = 1_000_000_000;

/// Docker's `--restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    #[default]
    No,
    OnFailure,
    Always,
}

/// `lamina run`'s request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub name: String,
    pub image: String,
    /// Replaces the image's Cmd when not empty.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `K=V`, added to the image's Env.
    #[serde(default)]
    pub env: Vec<String>,
    /// `VOL:/path[:ro]`; named volumes are created when missing, as Docker does.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// memory.max in bytes.
    #[serde(default)]
    pub memory: Option<u64>,
    /// CPUs in billionths (Docker's NanoCpus; cpu.max quota over a 100 ms period).
    #[serde(default)]
    pub nano_cpus: Option<u64>,
    /// The writable layer's size limit in bytes (XFS project quota).
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub restart: Restart,
    /// Remove the container when it exits (and is not restarted).
    #[serde(default)]
    pub rm: bool,
    /// `--network`: a network's name (default Docker's `bridge`), or `none`.
    #[serde(default)]
    pub network: Option<String>,
    /// `-p HOSTPORT:PORT[/tcp|/udp]`: published on the guest's addresses (CNI portmap).
    #[serde(default)]
    pub ports: Vec<String>,
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Created,
    Running,
    Restarting,
    Exited,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct State {
    pub status: Status,
    pub pid: Option<i32>,
    pub exit_code: Option<i32>,
    /// The kernel's OOM killer killed a process of the container (its cgroup's
    /// memory.events oom_kill went up).
    pub oom_killed: bool,
    pub restarts: u32,
    /// Unix seconds.
    pub started_at: u64,
    pub finished_at: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("invalid container name {0:?} (letters, digits, _ . - ; up to 64)")]
    Name(String),
    #[error("invalid environment variable {0:?} (want KEY=VALUE)")]
    Env(String),
    #[error("invalid volume {0:?} (want VOLUME:/path[:ro|:rw])")]
    Volume(String),
    #[error("invalid {what} {value}")]
    Limit { what: &'static str, value: String },
    #[error(transparent)]
    Port(#[from] super::network::cni::PortError),
}

/// Docker's container name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn check_name(name: &str) -> Result<(), SpecError> {
    let mut c = name.chars();
    let ok = c.next().is_some_and(|f| f.is_ascii_alphanumeric())
        && c.all(|x| x.is_ascii_alphanumeric() || "_.-".contains(x))
        && name.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(SpecError::Name(name.into()))
    }
}

impl RunSpec {
    pub fn check(&self) -> Result<(), SpecError> {
        check_name(&self.name)?;
        for e in &self.env {
            if e.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
                return Err(SpecError::Env(e.clone()));
            }
        }
        for v in &self.volumes {
            overlay::VolumeBind::parse(v).map_err(|_| SpecError::Volume(v.clone()))?;
        }
        for p in &self.ports {
            super::network::cni::PortMap::parse(p)?;
        }
        if self.memory.is_some_and(|m| m < 6 << 20) {
            // Docker's floor: "Minimum memory limit allowed is 6MB".
            return Err(SpecError::Limit {
                what: "memory",
                value: format!(
                    "{} (minimum memory limit allowed is 6MB)",
                    self.memory.unwrap_or(0)
                ),
            });
        }
        if let Some(c) = self.nano_cpus.filter(|&c| c == 0 || c > 1024 * NANO) {
            return Err(SpecError::Limit {
                what: "cpus",
                value: format!("{} (want more than 0 and at most 1024)", c as f64 / NANO as f64),
            });
        }
        Ok(())
    }

    /// The network it joins (`none`: only `lo`).
    pub fn network_name(&self) -> &str {
        self.network.as_deref().unwrap_or(super::network::DEFAULT)
    }

    /// The published ports (checked by [`RunSpec::check`]).
    pub fn port_maps(&self) -> Vec<super::network::cni::PortMap> {
        self.ports.iter().filter_map(|p| super::network::cni::PortMap::parse(p).ok()).collect()
    }

    /// The named volumes.
    pub fn volume_binds(&self) -> Vec<overlay::VolumeBind> {
        self.volumes.iter().filter_map(|v| overlay::VolumeBind::parse(v).ok()).collect()
    }

    /// Adjusts the OCI config the store wrote from the image: the command, the environment,
    /// and the cgroup the container runs in (its limits are set by init on that cgroup's
    /// parent, see [`super::cgroup`]).
    pub fn apply(&self, config: &mut Value, cgroup: &str) {
        if !self.cmd.is_empty() {
            config["process"]["args"] = Value::from(self.cmd.clone());
        }
        if let Some(env) = config["process"]["env"].as_array_mut() {
            for e in &self.env {
                let key = e.split('=').next().unwrap_or("");
                env.retain(|x| x.as_str().and_then(|s| s.split('=').next()) != Some(key));
                env.push(Value::from(e.clone()));
            }
        }
        config["linux"]["cgroupsPath"] = Value::from(cgroup);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        RunSpec { name: "web".into(), image: "bb".into(), ..Default::default() }
    }

    #[test]
    fn rt_spec_and_restart_names() {
        let s = RunSpec {
            restart: Restart::OnFailure,
            memory: Some(64 << 20),
            env: vec!["A=1".into()],
            ..spec()
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["restart"], "on-failure");
        assert_eq!(serde_json::from_value::<RunSpec>(v).unwrap(), s);
        assert_eq!(serde_json::to_value(Status::Exited).unwrap(), "exited");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        assert!(spec().check().is_ok());
        assert_eq!(
            RunSpec { name: "-x".into(), ..spec() }.check(),
            Err(SpecError::Name("-x".into()))
        );
        assert_eq!(
            RunSpec { name: "a/b".into(), ..spec() }.check(),
            Err(SpecError::Name("a/b".into()))
        );
        assert_eq!(
            RunSpec { env: vec!["=1".into()], ..spec() }.check(),
            Err(SpecError::Env("=1".into()))
        );
        assert!(matches!(
            RunSpec { volumes: vec!["data".into()], ..spec() }.check(),
            Err(SpecError::Volume(_))
        ));
        let e = RunSpec { memory: Some(1 << 20), ..spec() }.check().unwrap_err();
        assert!(e.to_string().contains("6MB"), "{e}");
        assert_eq!(
            RunSpec { nano_cpus: Some(0), ..spec() }.check(),
            Err(SpecError::Limit {
                what: "cpus",
                value: "0 (want more than 0 and at most 1024)".into()
            })
        );
        let e = RunSpec { ports: vec!["8080".into()], ..spec() }.check().unwrap_err();
        assert!(e.to_string().contains("HOSTPORT:PORT"), "{e}");
        let ok = RunSpec { ports: vec!["8080:80".into()], ..spec() };
        assert_eq!(ok.check(), Ok(()));
        assert_eq!(ok.port_maps()[0].container_port, 80);
        assert_eq!(ok.network_name(), "bridge");
    }

    #[test]
    fn apply_sets_command_env_and_cgroup() {
        let mut c = serde_json::json!({
            "process": {"args": ["/bin/sh"], "env": ["PATH=/bin", "A=0"]},
            "linux": {}
        });
        let s = RunSpec {
            cmd: vec!["echo".into(), "hi".into()],
            env: vec!["A=1".into(), "B=2".into()],
            ..spec()
        };
        s.apply(&mut c, "/lamina/web/ctr");
        assert_eq!(c["process"]["args"], serde_json::json!(["echo", "hi"]));
        assert_eq!(c["process"]["env"], serde_json::json!(["PATH=/bin", "A=1", "B=2"]));
        assert_eq!(c["linux"]["cgroupsPath"], "/lamina/web/ctr");
    }
}
