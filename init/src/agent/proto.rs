//! The guest agent's wire format: one JSON object per line, in the qemu-guest-agent shape.
//!
//! ```text
//! host → guest  {"execute": "help" | "status" | "shutdown" | "exec", "arguments": {…}?, "id": N?}
//!                pool verbs, answered by the pool daemon's control socket:
//!                "volume.create" {name, size, export?, encrypted?} | "volume.export" {name, export} |
//!                "volume.snapshot" {origin, name} | "volume.remove" {name} | "volume.list" |
//!                "pool.status" | "pool.extend" {device}
//! guest → host  {"return": …, "id": N?}   or   {"error": {"code": "...", "message": "..."}, "id": N?}
//! ```
//! Pure types and parsing; no I/O.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest request line accepted (bytes, without the newline).
pub const MAX_LINE: usize = 64 * 1024;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The verbs this agent answers ([`VERBS`]).
    Help,
    Status,
    Shutdown,
    Exec(ExecArgs),
    /// A pool verb, forwarded to the daemon.
    Pool(thinpool::daemon::control::Request),
    /// A layer-store verb.
    Image(ImageRequest),
    /// A container verb.
    Container(ContainerRequest),
    /// A named-volume or whole-store verb.
    System(SystemRequest),
    /// `store.unlock {passphrase}`: the encrypted store's passphrase for a waiting boot.
    Unlock(Passphrase),
    /// A network verb.
    Network(NetworkRequest),
}

/// Docker's `network create|ls|rm|inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", deny_unknown_fields)]
pub enum NetworkRequest {
    #[serde(rename = "network.create")]
    Create {
        name: String,
        #[serde(default)]
        subnet: Option<String>,
    },
    #[serde(rename = "network.ls")]
    List,
    #[serde(rename = "network.rm")]
    Remove { name: String },
    #[serde(rename = "network.inspect")]
    Inspect { name: String },
}

/// A passphrase; `Debug` does not print it (requests may be logged).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Passphrase {
    pub passphrase: String,
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Passphrase(<{} bytes>)", self.passphrase.len())
    }
}

/// Named volumes (Docker's, in the layer store; not the pool's thin `volume.*`) and the
/// store as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", deny_unknown_fields)]
pub enum SystemRequest {
    #[serde(rename = "store.volume.create")]
    VolumeCreate { name: String },
    #[serde(rename = "store.volume.ls")]
    VolumeList,
    #[serde(rename = "store.volume.rm")]
    VolumeRemove { name: String },
    #[serde(rename = "system.df")]
    Df,
    #[serde(rename = "system.prune")]
    Prune {
        #[serde(default)]
        all: bool,
        #[serde(default)]
        volumes: bool,
    },
}

/// The container verbs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", deny_unknown_fields)]
pub enum ContainerRequest {
    #[serde(rename = "container.run")]
    Run { spec: crate::containers::spec::RunSpec },
    #[serde(rename = "container.start")]
    Start { name: String },
    #[serde(rename = "container.stop")]
    Stop {
        name: String,
        #[serde(default)]
        timeout_secs: Option<u64>,
    },
    #[serde(rename = "container.rm")]
    Remove {
        name: String,
        #[serde(default)]
        force: bool,
    },
    #[serde(rename = "container.ls")]
    List {
        #[serde(default)]
        all: bool,
    },
    #[serde(rename = "container.logs")]
    Logs {
        name: String,
        #[serde(default)]
        offset: u64,
    },
    #[serde(rename = "container.exec")]
    Exec {
        name: String,
        argv: Vec<String>,
        #[serde(default)]
        timeout_secs: Option<u64>,
    },
    #[serde(rename = "container.commit")]
    Commit { name: String, image: String },
}

/// The layer store's agent verbs (bulk bytes go over the data channel instead).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", deny_unknown_fields)]
pub enum ImageRequest {
    #[serde(rename = "image.ls")]
    List,
    #[serde(rename = "image.rm")]
    Remove { name: String },
}

/// Every verb with its arguments and what it does, as `help` lists them.
pub const VERBS: &[(&str, &str, &str)] = &[
    ("help", "", "lists the agent's verbs"),
    ("status", "", "uptime, kernel, memory, mounts, pool and XFS usage, READY summary"),
    ("shutdown", "", "orderly shutdown, then power off"),
    ("exec", "{argv, timeout_secs?}", "runs a command in the guest (lamina.debug=1 boots only)"),
    (
        "volume.create",
        "{name, size, export?, encrypted?}",
        "creates a thin volume (bytes), for export unless export: false; encrypted: LUKS2 with \
         the appliance's key",
    ),
    ("volume.export", "{name, export}", "offers a volume to NBD clients, or stops offering it"),
    ("volume.snapshot", "{origin, name}", "snapshots a volume"),
    ("volume.remove", "{name}", "removes a volume or snapshot"),
    ("volume.list", "", "lists the pool's volumes"),
    ("pool.status", "", "the pool's docker-info fields"),
    ("pool.extend", "{device}", "adds a disk to the volume group and grows the pool"),
    ("image.ls", "", "lists the layer store's images"),
    ("image.rm", "{name}", "removes an image (by tag or id) and the layers only it used"),
    ("container.run", "{spec}", "creates and starts a container (crun, cgroup v2 limits)"),
    ("container.start", "{name}", "starts a stopped container"),
    ("container.stop", "{name, timeout_secs?}", "SIGTERM, then SIGKILL after the timeout"),
    ("container.rm", "{name, force?}", "removes a container (force: stops it first)"),
    ("container.ls", "{all?}", "lists running (all: every) container"),
    ("container.logs", "{name, offset?}", "a container's output from a byte offset"),
    ("container.exec", "{name, argv, timeout_secs?}", "runs a command inside a container"),
    ("container.commit", "{name, image}", "commits a container's changes as an image"),
    (
        "store.unlock",
        "{passphrase}",
        "the encrypted store's passphrase, for a boot that waits for it",
    ),
    ("store.volume.create", "{name}", "creates a named volume"),
    ("store.volume.ls", "", "lists named volumes, their size and users"),
    ("store.volume.rm", "{name}", "removes a named volume no container uses"),
    ("system.df", "", "space taken by images, containers and volumes"),
    ("system.prune", "{all?, volumes?}", "removes what is unused, then fstrim"),
    ("network.create", "{name, subnet?}", "creates a bridge network (CNI bridge, host-local)"),
    ("network.ls", "", "lists the networks"),
    ("network.rm", "{name}", "removes a network no container is on"),
    ("network.inspect", "{name}", "a network, its members' addresses, host-local's store"),
];

/// The `help` reply: `[{verb, arguments, description}]`.
pub fn help() -> Value {
    Value::Array(
        VERBS
            .iter()
            .map(|(v, a, d)| serde_json::json!({"verb": v, "arguments": a, "description": d}))
            .collect(),
    )
}

/// Agent command names of the pool verbs and their control-socket `op`.
const POOL_VERBS: &[(&str, &str)] = &[
    ("volume.create", "create"),
    ("volume.export", "export"),
    ("volume.snapshot", "snapshot"),
    ("volume.remove", "remove"),
    ("volume.list", "list"),
    ("pool.status", "status"),
    ("pool.extend", "extend"),
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecArgs {
    /// Program and arguments (no shell).
    pub argv: Vec<String>,
    /// Seconds before the command is killed (default 10, capped by the config).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// Exit code, or `None` when killed by a signal.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub uptime_secs: f64,
    /// Online CPUs.
    #[serde(default)]
    pub cpus: u32,
    pub kernel: String,
    pub memory: Memory,
    pub mounts: Vec<Mount>,
    /// `null` until the pool is wired in.
    pub pool: Option<Value>,
    pub ready: bool,
    pub summary: String,
    pub debug: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    pub total_kib: u64,
    pub available_kib: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub source: String,
    pub target: String,
    pub fstype: String,
}

/// Machine-matchable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownCommand,
    Forbidden,
    ExecFailed,
    Internal,
    /// No such image, container or volume.
    NotFound,
    /// In use, or in the wrong state for the request.
    Conflict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RawRequest {
    execute: String,
    #[serde(default)]
    arguments: Option<Value>,
    #[serde(default)]
    id: Option<Value>,
}

/// One reply line (either `return` or `error` is set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(rename = "return", default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<AgentError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
}

impl Reply {
    pub fn ok(id: Option<Value>, ret: Value) -> Self {
        Self { ret: Some(ret), error: None, id }
    }

    pub fn err(id: Option<Value>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { ret: None, error: Some(AgentError { code, message: message.into() }), id }
    }

    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"error":{"code":"internal","message":"reply encoding"}}"#.into()
        });
        s.push('\n');
        s
    }
}

/// The arguments object of a verb whose request type is tagged by `op` (the verb's name).
fn tagged<T: serde::de::DeserializeOwned>(
    verb: &str,
    arguments: Option<Value>,
    id: &Option<Value>,
) -> Result<T, Reply> {
    let mut obj = match arguments {
        Some(Value::Object(m)) => m,
        None => serde_json::Map::new(),
        Some(_) => {
            return Err(Reply::err(
                id.clone(),
                ErrorCode::BadRequest,
                "arguments must be an object",
            ))
        }
    };
    obj.insert("op".into(), Value::from(verb));
    serde_json::from_value(Value::Object(obj)).map_err(|e| {
        let code = if e.to_string().contains("unknown variant") {
            ErrorCode::UnknownCommand
        } else {
            ErrorCode::BadRequest
        };
        Reply::err(id.clone(), code, format!("{verb}: {e}"))
    })
}

/// A request's arguments as sent.
fn arguments<T: Serialize>(r: &T) -> Option<Value> {
    Some(serde_json::to_value(r).unwrap_or(Value::Null))
}

/// Untags a tagged request into (its `op`, the other arguments).
fn untag<T: Serialize>(r: &T) -> (String, Option<Value>) {
    let mut v = arguments(r);
    let op = v.as_ref().and_then(|v| v.get("op")).and_then(Value::as_str).unwrap_or("").to_owned();
    if let Some(m) = v.as_mut().and_then(Value::as_object_mut) {
        m.remove("op");
    }
    (op, v)
}

/// Parses a request line; on failure returns the error reply to send (with the id if found).
pub fn parse_request(line: &str) -> Result<(Option<Value>, Command), Reply> {
    if line.len() > MAX_LINE {
        return Err(Reply::err(
            None,
            ErrorCode::BadRequest,
            format!("request longer than {MAX_LINE} bytes"),
        ));
    }
    let raw: RawRequest = serde_json::from_str(line).map_err(|e| {
        Reply::err(None, ErrorCode::BadRequest, format!("not a request object: {e}"))
    })?;
    let id = raw.id.clone();
    let cmd = match raw.execute.as_str() {
        "help" => Command::Help,
        "status" => Command::Status,
        "shutdown" => Command::Shutdown,
        "exec" => {
            let args = raw.arguments.ok_or_else(|| {
                Reply::err(id.clone(), ErrorCode::BadRequest, "exec needs arguments {argv: [...]}")
            })?;
            let args: ExecArgs = serde_json::from_value(args).map_err(|e| {
                Reply::err(id.clone(), ErrorCode::BadRequest, format!("exec arguments: {e}"))
            })?;
            if args.argv.is_empty() {
                return Err(Reply::err(id, ErrorCode::BadRequest, "exec argv is empty"));
            }
            Command::Exec(args)
        }
        verb if verb.starts_with("image.") => Command::Image(tagged(verb, raw.arguments, &id)?),
        verb if verb.starts_with("container.") => {
            Command::Container(tagged(verb, raw.arguments, &id)?)
        }
        "store.unlock" => {
            let args = raw.arguments.ok_or_else(|| {
                Reply::err(id.clone(), ErrorCode::BadRequest, "store.unlock needs {passphrase}")
            })?;
            Command::Unlock(serde_json::from_value(args).map_err(|e| {
                Reply::err(id.clone(), ErrorCode::BadRequest, format!("store.unlock: {e}"))
            })?)
        }
        verb if verb.starts_with("network.") => Command::Network(tagged(verb, raw.arguments, &id)?),
        verb if verb.starts_with("store.") || verb.starts_with("system.") => {
            Command::System(tagged(verb, raw.arguments, &id)?)
        }
        verb if POOL_VERBS.iter().any(|(n, _)| *n == verb) => {
            let op = POOL_VERBS.iter().find(|(n, _)| *n == verb).map(|(_, o)| *o).unwrap_or("");
            let mut obj = match raw.arguments {
                Some(Value::Object(m)) => m,
                None => serde_json::Map::new(),
                Some(_) => {
                    return Err(Reply::err(
                        id,
                        ErrorCode::BadRequest,
                        "arguments must be an object",
                    ))
                }
            };
            obj.insert("op".into(), Value::from(op));
            // A volume the host asks for is for export: the appliance's daemon serves only
            // those (`--exports flagged`), never the volumes it makes for itself.
            if op == "create" {
                obj.entry("export").or_insert(Value::Bool(true));
            }
            let req = serde_json::from_value(Value::Object(obj)).map_err(|e| {
                Reply::err(id.clone(), ErrorCode::BadRequest, format!("{verb} arguments: {e}"))
            })?;
            Command::Pool(req)
        }
        other => {
            return Err(Reply::err(
                id,
                ErrorCode::UnknownCommand,
                format!("unknown command {other:?}"),
            ))
        }
    };
    Ok((id, cmd))
}

/// Encodes a request line (host side).
pub fn request_line(id: u64, cmd: &Command) -> String {
    let (execute, arguments) = match cmd {
        Command::Help => ("help".into(), None),
        Command::Status => ("status".into(), None),
        Command::Shutdown => ("shutdown".into(), None),
        Command::Exec(a) => ("exec".into(), arguments(a)),
        Command::Unlock(p) => ("store.unlock".into(), arguments(p)),
        Command::Image(r) => untag(r),
        Command::Container(r) => untag(r),
        Command::System(r) => untag(r),
        Command::Network(r) => untag(r),
        Command::Pool(r) => {
            // The control socket's `op` goes out as the agent's name for the verb.
            let (op, v) = untag(r);
            let name = POOL_VERBS.iter().find(|(_, o)| *o == op).map_or("?", |(n, _)| *n);
            (name.into(), v)
        }
    };
    encode(id, &execute, arguments)
}

fn encode(id: u64, execute: &str, arguments: Option<Value>) -> String {
    let raw = RawRequest { execute: execute.into(), arguments, id: Some(Value::from(id)) };
    let mut s = serde_json::to_string(&raw).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rt_requests() {
        let exec = Command::Exec(ExecArgs {
            argv: vec!["cat".into(), "/proc/modules".into()],
            timeout_secs: Some(5),
        });
        use thinpool::daemon::control::Request as R;
        let pool = [
            Command::Pool(R::Create {
                name: "v".into(),
                size: units::Bytes::GIB,
                export: true,
                encrypted: false,
                luks_header: None,
            }),
            Command::Pool(R::Export { name: "v".into(), export: false }),
            Command::Pool(R::Snapshot { origin: "v".into(), name: "s".into() }),
            Command::Pool(R::Remove { name: "s".into() }),
            Command::Pool(R::List),
            Command::Pool(R::Status),
            Command::Pool(R::Extend { device: "/dev/vdb".into() }),
        ];
        let images = [
            Command::Image(ImageRequest::List),
            Command::Image(ImageRequest::Remove { name: "busybox:1".into() }),
            Command::Container(ContainerRequest::Run {
                spec: crate::containers::spec::RunSpec {
                    name: "c".into(),
                    image: "bb".into(),
                    ..Default::default()
                },
            }),
            Command::Container(ContainerRequest::Logs { name: "c".into(), offset: 7 }),
            Command::Container(ContainerRequest::List { all: true }),
            Command::System(SystemRequest::VolumeRemove { name: "data".into() }),
            Command::System(SystemRequest::Prune { all: true, volumes: true }),
            Command::System(SystemRequest::Df),
            Command::Network(NetworkRequest::Create {
                name: "n".into(),
                subnet: Some("10.9.0.0/16".into()),
            }),
            Command::Network(NetworkRequest::List),
            Command::Network(NetworkRequest::Remove { name: "n".into() }),
        ];
        let all = [Command::Help, Command::Status, Command::Shutdown, exec]
            .into_iter()
            .chain(pool)
            .chain(images);
        for (i, c) in all.enumerate() {
            let line = request_line(i as u64, &c);
            assert!(line.ends_with('\n'));
            let (id, back) = parse_request(line.trim_end()).unwrap();
            assert_eq!(id, Some(Value::from(i as u64)));
            assert_eq!(back, c);
        }
    }

    #[test]
    fn host_volumes_are_for_export_unless_asked_otherwise() {
        use thinpool::daemon::control::Request as R;
        let create = |args: &str| {
            let line = format!(r#"{{"execute":"volume.create","arguments":{args}}}"#);
            match parse_request(&line).unwrap().1 {
                Command::Pool(r) => r,
                other => panic!("volume.create parsed as {other:?}"),
            }
        };
        assert_eq!(
            create(r#"{"name":"v","size":4096}"#),
            R::Create {
                name: "v".into(),
                size: units::Bytes::new(4096),
                export: true,
                encrypted: false,
                luks_header: None
            }
        );
        assert_eq!(
            create(r#"{"name":"v","size":4096,"export":false}"#),
            R::Create {
                name: "v".into(),
                size: units::Bytes::new(4096),
                export: false,
                encrypted: false,
                luks_header: None
            }
        );
    }

    #[test]
    fn rt_replies() {
        let ok = Reply::ok(Some(1.into()), serde_json::json!({"a": 1}));
        let back: Reply = serde_json::from_str(&ok.to_line()).unwrap();
        assert_eq!(back, ok);
        let err = Reply::err(None, ErrorCode::Forbidden, "exec needs lamina.debug=1");
        let line = err.to_line();
        assert_eq!(
            line,
            "{\"error\":{\"code\":\"forbidden\",\"message\":\"exec needs lamina.debug=1\"}}\n"
        );
        assert_eq!(serde_json::from_str::<Reply>(&line).unwrap(), err);
    }

    #[test]
    fn rt_status_and_exec_result() {
        let s = Status {
            uptime_secs: 1.5,
            cpus: 2,
            kernel: "6.1".into(),
            memory: Memory { total_kib: 1, available_kib: 2 },
            mounts: vec![Mount {
                source: "proc".into(),
                target: "/proc".into(),
                fstype: "proc".into(),
            }],
            pool: None,
            ready: true,
            summary: "x".into(),
            debug: false,
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["pool"], Value::Null);
        assert_eq!(serde_json::from_value::<Status>(v).unwrap(), s);
        let r = ExecResult {
            exit_code: Some(0),
            signal: None,
            timed_out: false,
            stdout: "o".into(),
            stderr: String::new(),
        };
        assert_eq!(
            serde_json::from_value::<ExecResult>(serde_json::to_value(&r).unwrap()).unwrap(),
            r
        );
    }

    #[test]
    fn bad_requests_get_coded_errors() {
        let code = |l: &str| parse_request(l).unwrap_err().error.unwrap().code;
        assert_eq!(code("nope"), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"execute":"reboot","id":3}"#), ErrorCode::UnknownCommand);
        assert_eq!(code(r#"{"execute":"exec"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"execute":"exec","arguments":{"argv":[]}}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"execute":"exec","arguments":{"argv":["x"],"bogus":1}}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(parse_request(r#"{"execute":"reboot","id":3}"#).unwrap_err().id, Some(3.into()));
        assert_eq!(code(&"x".repeat(MAX_LINE + 1)), ErrorCode::BadRequest);
    }

    #[test]
    fn help_lists_every_verb_parse_request_accepts() {
        let h = help();
        let verbs: Vec<&str> =
            h.as_array().unwrap().iter().map(|v| v["verb"].as_str().unwrap()).collect();
        assert!(verbs.contains(&"help") && verbs.contains(&"volume.create"), "{verbs:?}");
        for v in verbs {
            let args = match v {
                "exec" => r#","arguments":{"argv":["true"]}"#,
                "volume.create" => r#","arguments":{"name":"a","size":1}"#,
                "volume.snapshot" => r#","arguments":{"origin":"a","name":"b"}"#,
                "volume.remove" => r#","arguments":{"name":"a"}"#,
                "volume.export" => r#","arguments":{"name":"a","export":true}"#,
                "pool.extend" => r#","arguments":{"device":"/dev/vdb"}"#,
                "image.rm" | "container.start" | "container.stop" | "container.rm"
                | "container.logs" => r#","arguments":{"name":"x"}"#,
                "container.run" => r#","arguments":{"spec":{"name":"x","image":"y"}}"#,
                "container.exec" => r#","arguments":{"name":"x","argv":["true"]}"#,
                "container.commit" => r#","arguments":{"name":"x","image":"y"}"#,
                "store.volume.create" | "store.volume.rm" => r#","arguments":{"name":"x"}"#,
                "store.unlock" => r#","arguments":{"passphrase":"p"}"#,
                "network.create" | "network.rm" | "network.inspect" => {
                    r#","arguments":{"name":"x"}"#
                }
                _ => "",
            };
            let line = format!(r#"{{"execute":"{v}"{args}}}"#);
            assert!(parse_request(&line).is_ok(), "{line}");
        }
        // Every pool verb is listed.
        for (name, _) in POOL_VERBS {
            assert!(VERBS.iter().any(|(v, ..)| v == name), "{name} missing from VERBS");
        }
    }

    #[test]
    fn unlock_round_trips_and_never_prints_the_passphrase() {
        let cmd = Command::Unlock(Passphrase { passphrase: "hunter2".into() });
        let line = request_line(7, &cmd);
        let (_, back) = parse_request(&line).unwrap();
        assert_eq!(back, cmd);
        assert!(!format!("{cmd:?}").contains("hunter2"));
        let e = parse_request(r#"{"execute":"store.unlock"}"#).unwrap_err();
        assert_eq!(e.id, None);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = parse_request(&s);
        }
    }
}
