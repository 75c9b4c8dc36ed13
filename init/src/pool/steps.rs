//! The pool's bring-up as boot steps (see the parent module for what each does and
//! [`crate::sequence`] for the list). Every step is fatal: each needs what the one before
//! made. Each prints its progress as `pool: … [+seconds since the first pool step]`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    dev_list, fail, strings, Contents, Daemon, MKFS_XFS, MOUNT, STATE_DIR, STORE, THINPOOL,
};
use crate::attach::{self, Attach};
use crate::luks::KeySource;
use crate::sequence::{Boot, BootError};
use units::Bytes;

type StepResult = Result<(), BootError>;

/// Step 1: The pool's disks, waited for.
pub(crate) fn disks(b: &mut Boot) -> StepResult {
    b.up.t0 = Some(Instant::now());
    let devices = b.sys.pool_disks(&b.cfg.pool).map_err(|e| fail(e.to_string()))?;
    b.up.devs = dev_list(&devices);
    b.pool.devices = devices;
    Ok(())
}

/// Step 2: Where the store's key comes from: a key disk, the agent, or none (plain store).
pub(crate) fn store_key(b: &mut Boot) -> StepResult {
    let key = match b.sys.key_disk()? {
        Some(dev) => {
            b.pool_say(&format!("store key from {}", dev.display()));
            KeySource::File(PathBuf::from(crate::luks::KEY))
        }
        None if b.cfg.pool.passphrase_wait_secs > 0 => {
            KeySource::Agent(Duration::from_secs(b.cfg.pool.passphrase_wait_secs))
        }
        None => KeySource::None,
    };
    b.up.key = Some(key);
    Ok(())
}

/// Step 3: dm.* options given: `thinpool init` checks them against the group (Docker's refusal of
/// a changed direct-lvm setting) before the daemon opens it.
pub(crate) fn volume_group(b: &mut Boot) -> StepResult {
    let opts = b.opts.clone().unwrap_or_default();
    if let Some(out) = b.sys.check_pool(&b.cfg, &opts, &b.reaper, &b.up.devs)? {
        b.pool_say(&out);
        b.pool.created = out.starts_with("created");
    }
    Ok(())
}

/// Step 4: The daemon. Every boot after the first it opens the pool itself (one process start
/// fewer than asking the CLI first). When it cannot (first boot: no pool, or no `store`),
/// the CLI tells why and lays down what is missing, and the daemon starts again.
pub(crate) fn daemon(b: &mut Boot) -> StepResult {
    let cfg = &b.cfg.pool;
    let devs = b.up.devs.clone();
    let mut argv_base = strings(&[
        THINPOOL,
        "serve",
        &devs,
        "--state-dir",
        STATE_DIR,
        "--listen",
        &format!("0.0.0.0:{}", cfg.nbd_port),
        "--io-flusher",
        // Only volumes created for export reach the network: the store and a storage
        // driver's devices are the appliance's own.
        "--exports",
        "flagged",
    ]);
    if let Some((dev, args)) = b.sys.tls_disk()? {
        argv_base.extend(args);
        b.pool_say(&format!("NBD over TLS only, client certificates checked ({})", dev.display()));
    }
    let d = Arc::new(Daemon {
        argv_base,
        log: cfg.log.clone(),
        connections: cfg.connections.max(1),
        dead_conn_timeout_secs: cfg.dead_conn_timeout_secs,
        attach: b.cfg.attach,
        pid: AtomicU32::new(0),
        stopping: AtomicBool::new(false),
        restarts: AtomicU32::new(0),
        last_exit: Mutex::new(None),
    });
    let started = match b.sys.start_daemon(&b.reaper, &d) {
        Ok(s) => {
            b.pool_say(&format!("found the pool on {devs}"));
            s
        }
        Err(first) => {
            let volumes = match cli_volumes(b, &devs) {
                Ok(v) => {
                    b.pool_say(&format!("found the pool on {devs} ({} volume(s))", v.len()));
                    v
                }
                Err(why) => {
                    b.pool_say(&format!(
                        "no pool on {devs} ({why}); creating one (direct-lvm defaults)"
                    ));
                    let mut argv = strings(&[THINPOOL, "init", STATE_DIR, "--device", &devs]);
                    let opts = b.opts.clone().unwrap_or_default();
                    argv.extend(opts.init_args(&b.cfg.pool.basesize, b.cfg.pool.force));
                    let out = b.sys.helper(&b.reaper, &argv, Duration::from_secs(120))?;
                    b.pool_say(out.trim());
                    b.pool.created = true;
                    Vec::new()
                }
            };
            if volumes.iter().any(|v| v["name"] == STORE) {
                b.pool_say(&format!("daemon did not start ({first}); trying again"));
            } else {
                let (basesize, size) = basesize(b)?;
                let size = size.to_string();
                let argv = strings(&[THINPOOL, "create", &devs, STORE, "--size", &size]);
                b.sys.helper(&b.reaper, &argv, Duration::from_secs(60))?;
                b.pool_say(&format!("created volume {STORE} ({basesize})"));
            }
            b.sys.start_daemon(&b.reaper, &d)?
        }
    };
    b.pool_say(&format!(
        "daemon started (pid {}, NBD on port {})",
        started.pid, b.cfg.pool.nbd_port
    ));
    b.pool.daemon = Some(d.clone());
    b.up.daemon = Some(d);
    b.up.started = Some(started);
    Ok(())
}

/// The pool's volumes through the CLI (before the daemon runs).
fn cli_volumes(b: &Boot, devs: &str) -> Result<Vec<Value>, super::PoolError> {
    let argv = strings(&[THINPOOL, "list", devs, "--json"]);
    let out = b.sys.helper(&b.reaper, &argv, Duration::from_secs(60))?;
    match serde_json::from_str::<Value>(&out) {
        Ok(Value::Array(v)) => Ok(v),
        _ => Err(fail(format!("`thinpool list --json` printed {out:?}"))),
    }
}

/// The base volume's size (`dm.basesize`, else `pool.basesize`): as given, and in bytes.
fn basesize(b: &Boot) -> Result<(String, Bytes), super::PoolError> {
    let given =
        b.opts.as_ref().and_then(|o| o.dm_value("dm.basesize")).unwrap_or(&b.cfg.pool.basesize);
    let size: Bytes = given.parse().map_err(|e| fail(format!("pool.basesize {given:?}: {e}")))?;
    Ok((given.to_owned(), size))
}

/// Step 5: The base volume `store`: the daemon may have opened a pool without it (`thinpool
/// init` just laid the pool down, dm.* options checked above; a ublk attach needs nothing
/// at start).
pub(crate) fn store_volume(b: &mut Boot) -> StepResult {
    let mut list = b.sys.volumes()?;
    if !list.iter().any(|(name, _)| name == STORE) {
        let (given, size) = basesize(b)?;
        b.sys.create_volume(STORE, size)?;
        b.pool_say(&format!("created volume {STORE} ({given})"));
        list = b.sys.volumes()?;
    }
    b.pool.size = list
        .iter()
        .find(|(name, _)| name == STORE)
        .map(|(_, size)| *size)
        .ok_or_else(|| fail(format!("volume {STORE} missing from the daemon's list")))?;
    Ok(())
}

/// Step 6: The store's block device: `/dev/ublkb0`, or `/dev/nbd0` over the daemon's socketpairs.
pub(crate) fn attach(b: &mut Boot) -> StepResult {
    let kernel = b.up.started.as_mut().map(|s| std::mem::take(&mut s.kernel)).unwrap_or_default();
    let dev = match b.cfg.attach {
        Attach::Nbd => {
            let say = |m: &str| b.pool_say(m);
            b.sys.attach_nbd(&b.cfg, b.pool.size, &kernel, &say)?
        }
        Attach::Ublk => {
            drop(kernel);
            let dev = b.sys.attach_ublk(STORE)?;
            b.pool_say(&format!("{} attached over ublk ({} bytes)", dev.display(), b.pool.size));
            dev
        }
    };
    b.pool.attached = true;
    b.pool.device = Some(dev.clone());
    b.up.dev = Some(dev);
    Ok(())
}

/// Step 7: The thread that restarts the daemon whenever it exits.
pub(crate) fn supervisor(b: &mut Boot) -> StepResult {
    let (Some(d), Some(started)) = (b.up.daemon.clone(), b.up.started.take()) else {
        return Err(fail("supervisor: no daemon").into());
    };
    b.pool.supervisor = Some(b.sys.supervise(d, b.reaper.clone(), started)?);
    Ok(())
}

fn device(b: &Boot) -> Result<PathBuf, BootError> {
    b.up.dev.clone().ok_or_else(|| fail("the store is not attached").into())
}

/// Step 8: The store device with its size, then (LUKS2) the mapping its filesystem lives on.
pub(crate) fn unlock(b: &mut Boot) -> StepResult {
    let dev = device(b)?;
    b.sys.wait_block_device(&attach::sys_name(&dev))?;
    let key = b.up.key.clone().unwrap_or(KeySource::None);
    if key != KeySource::None {
        // dm-crypt and its crypto modules load in the background with the mount's.
        b.modules.join();
    }
    let say = |m: &str| b.pool_say(m);
    let (dev, crypt, fresh) = b.sys.unlock_store(&dev, &key, &b.reaper, &say)?;
    b.pool.crypt = crypt;
    b.up.dev = Some(dev);
    b.up.fresh = fresh;
    Ok(())
}

/// Step 9: `mkfs.xfs` only when the device holds no filesystem (or, with `pool.force`, a foreign
/// one).
pub(crate) fn filesystem(b: &mut Boot) -> StepResult {
    let dev = device(b)?;
    // A store just formatted LUKS2 decrypts its unwritten blocks to noise: it is new.
    let contents = if b.up.fresh {
        Contents::Empty
    } else {
        b.sys.probe(&dev).map_err(|e| fail(format!("reading {}: {e}", dev.display())))?
    };
    match contents {
        Contents::Xfs => b.pool_say(&format!("{} holds XFS", dev.display())),
        c @ (Contents::Empty | Contents::Other) => {
            if c == Contents::Other && !b.cfg.pool.force {
                return Err(fail(format!(
                    "{} holds something that is not XFS; refusing to format it \
                     (lamina.pool.force=1 overrides)",
                    dev.display()
                ))
                .into());
            }
            let t = Instant::now();
            let mut argv = strings(&[MKFS_XFS, "-q", "-K", "-n", "ftype=1", "-m", "crc=1"]);
            if c == Contents::Other {
                argv.push("-f".into());
            }
            argv.push(dev.display().to_string());
            b.sys.helper(&b.reaper, &argv, Duration::from_secs(300))?;
            b.pool_say(&format!("mkfs.xfs {} in {:.2}s", dev.display(), t.elapsed().as_secs_f64()));
        }
    }
    Ok(())
}

/// Step 10: The XFS at [`MOUNT`] with project quotas (without, if the kernel refuses them), once
/// the filesystem modules are in; `overlay2/` inside.
pub(crate) fn mount(b: &mut Boot) -> StepResult {
    let dev = device(b)?;
    let mount = std::path::Path::new(MOUNT);
    b.sys.mkdir(mount).map_err(|e| fail(format!("mkdir {MOUNT}: {e}")))?;
    b.modules.join();
    let quota = match b.sys.mount_xfs(&dev, true) {
        Ok(()) => "prjquota",
        Err(e) => {
            b.pool_say(&format!("mount with prjquota failed ({e}); mounting without quotas"));
            b.sys
                .mount_xfs(&dev, false)
                .map_err(|e| fail(format!("mount {} on {MOUNT}: {e}", dev.display())))?;
            "no quota"
        }
    };
    b.pool.mounted = true;
    let overlay = mount.join("overlay2");
    b.sys.mkdir(&overlay).map_err(|e| fail(format!("mkdir {}: {e}", overlay.display())))?;
    b.pool_say(&format!("XFS on {} mounted at {MOUNT} ({quota})", dev.display()));
    b.pool.wired = true;
    let t = b.up.t0.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
    b.pool_say(&format!("up in {t:.2}s"));
    Ok(())
}
