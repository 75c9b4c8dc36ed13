//! The real [`System`]: the kernel, sysfs, the pool daemon and its helpers.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{BootError, System};
use crate::agent::{self, Shared};
use crate::boot::{self, Kernel, Loading, ModuleLine, NetError, RealKernel};
use crate::config::{self, Config};
use crate::containers::{self, error::StoreError};
use crate::luks::KeySource;
use crate::options::{self, OptionsError, StoreOptions};
use crate::pool::{self, fail, Contents, Daemon, PoolError, Started, MOUNT};
use crate::reaper::Reaper;
use crate::wait::{self, WaitError};
use crate::{attach, netlink};
use units::Bytes;

pub(crate) struct RealSystem;

impl System for RealSystem {
    fn say(&self, line: &str) {
        crate::say(line)
    }

    fn kernel(&self) -> &dyn Kernel {
        &RealKernel
    }

    fn read(&self, path: &str) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn cad_off(&self) -> std::io::Result<()> {
        Ok(rustix::system::reboot(rustix::system::RebootCommand::CadOff)?)
    }

    fn load_later(&self, lines: Vec<ModuleLine>) -> Loading {
        Loading::start(lines)
    }

    fn network(&self, cfg: &config::Network) -> Result<String, NetError> {
        let find = |name: &str, wait: Duration| {
            let deadline = Instant::now() + wait;
            loop {
                if let Some(i) = boot::ifindex(Path::new("/sys/class/net"), name) {
                    return Some(i);
                }
                if Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let mut nl = netlink::NlSocket::route()?;
        boot::bring_up_network(&mut nl, cfg, &find)
    }

    fn power_button(&self) -> Result<(PathBuf, File), BootError> {
        use std::os::unix::fs::OpenOptionsExt;
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(p) = crate::evdev::find_power_button(Path::new("/sys/class/input")) {
                return match std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                    .open(&p)
                {
                    Ok(f) => Ok((p, f)),
                    Err(source) => Err(BootError::PowerButton { path: p, source }),
                };
            }
            if Instant::now() >= deadline {
                return Err(BootError::NoPowerButton);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start_agent(
        &self,
        cfg: &config::Agent,
        shared: &Arc<Mutex<Shared>>,
        reaper: &Arc<Reaper>,
    ) -> Result<(PathBuf, Duration, OwnedFd), BootError> {
        use rustix::pipe::{pipe_with, PipeFlags};
        let (rx, tx) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)
            .map_err(|e| BootError::Io { what: "pipe", source: e.into() })?;
        let (port, waited) =
            agent::find_port(Path::new("/sys/class/virtio-ports"), &cfg.port, wait::DEVICE_WAIT)?;
        let (s, r, p) = (shared.clone(), reaper.clone(), port.clone());
        std::thread::Builder::new()
            .name("agent".into())
            .spawn(move || agent::serve(p, s, r, tx))
            .map_err(|source| BootError::Io { what: "agent thread", source })?;
        Ok((port, waited, rx))
    }

    /// The store's options (config disk, then `lamina.opt.*`), once the disks are there.
    fn store_options(
        &self,
        cmdline: &str,
        pool_enabled: bool,
    ) -> Result<StoreOptions, OptionsError> {
        if pool_enabled {
            // The config disk is a virtio disk like the pool's: give the disks their deadline.
            let sys_block = Path::new("/sys/block");
            let _ = wait::until(&wait::RealClock, "a virtio disk", wait::DEVICE_WAIT, || {
                if pool::data_disks(sys_block).is_empty() {
                    wait::Look::Missing
                } else {
                    wait::Look::Found(())
                }
            });
        }
        options::load(Path::new("/sys/block"), cmdline)
    }

    /// Opens the layer store on the pool's XFS and serves the data channel for it.
    fn start_store(
        &self,
        opts: &StoreOptions,
        shared: &Mutex<Shared>,
        reaper: &Arc<Reaper>,
    ) -> Result<String, StoreError> {
        use containers::error::Kind;
        let images = containers::Images::open(
            Path::new(containers::STORE_ROOT),
            Path::new(containers::INCOMING),
            opts.driver,
        )
        .map_err(|e| {
            StoreError::new(e.kind, format!("layer store {}: {e}", containers::STORE_ROOT))
        })?;
        let (cell, ctrs) = {
            let s = shared.lock().unwrap_or_else(|p| p.into_inner());
            (s.images.clone(), s.containers.clone())
        };
        let _ = cell.set(images);
        let _ = ctrs.set(containers::service::Containers::open(cell.clone(), reaper.clone()));
        let (port, _) = agent::find_port(
            Path::new("/sys/class/virtio-ports"),
            containers::DATA_PORT,
            wait::DEVICE_WAIT,
        )
        .map_err(|e| StoreError::new(Kind::Unavailable, e.to_string()))?;
        let msg = format!(
            "store {:?} at {}, data {}",
            opts.driver,
            containers::STORE_ROOT,
            port.display()
        );
        std::thread::Builder::new()
            .name("data".into())
            .spawn(move || containers::serve_data(port, cell))
            .map_err(|e| StoreError::io("data thread", e))?;
        Ok(msg)
    }

    fn pool_disks(&self, cfg: &config::Pool) -> Result<Vec<PathBuf>, WaitError> {
        wait::pool_disks(cfg)
    }

    fn key_disk(&self) -> Result<Option<PathBuf>, PoolError> {
        let Some(dev) = crate::luks::find(Path::new("/sys/block")) else { return Ok(None) };
        crate::luks::unpack(&dev, Path::new(crate::luks::KEY))
            .map_err(|e| fail(units::chain(&e)))?;
        Ok(Some(dev))
    }

    fn tls_disk(&self) -> Result<Option<(PathBuf, Vec<String>)>, PoolError> {
        let Some(dev) = crate::nbd_tls::find(Path::new("/sys/block")) else { return Ok(None) };
        let dir = Path::new(crate::nbd_tls::DIR);
        crate::nbd_tls::unpack(&dev, dir).map_err(|e| fail(units::chain(&e)))?;
        Ok(Some((dev, crate::nbd_tls::serve_args(dir))))
    }

    fn check_pool(
        &self,
        cfg: &Config,
        opts: &StoreOptions,
        reaper: &Reaper,
        devs: &str,
    ) -> Result<Option<String>, PoolError> {
        options::check_pool(cfg, opts, reaper, devs)
    }

    fn helper(
        &self,
        reaper: &Reaper,
        argv: &[String],
        timeout: Duration,
    ) -> Result<String, PoolError> {
        pool::run(reaper, argv, timeout)
    }

    fn start_daemon(&self, reaper: &Reaper, d: &Daemon) -> Result<Started, PoolError> {
        let (s, kernel) = pool::spawn_daemon(reaper, d)?;
        Ok(Started { pid: s.pid, exit: s.exit, kernel })
    }

    fn volumes(&self) -> Result<Vec<(String, Bytes)>, PoolError> {
        let list = pool::control_client()
            .list()
            .map_err(|e| fail(format!("list: {}", units::chain(&e))))?;
        Ok(list.into_iter().map(|v| (v.name, v.size)).collect())
    }

    fn create_volume(&self, name: &str, size: Bytes) -> Result<(), PoolError> {
        pool::control_client()
            .create(name, size)
            .map_err(|e| fail(format!("creating volume {name}: {}", units::chain(&e))))?;
        Ok(())
    }

    fn attach_nbd(
        &self,
        cfg: &Config,
        size: Bytes,
        kernel: &[OwnedFd],
        step: &dyn Fn(&str),
    ) -> Result<PathBuf, PoolError> {
        let dev = pool::attach_nbd(cfg, size, kernel, step)?;
        attach::record(config::Attach::Nbd, &dev);
        Ok(dev)
    }

    fn attach_ublk(&self, volume: &str) -> Result<PathBuf, PoolError> {
        let dev = attach::ublk_attach(volume)
            .map_err(|e| fail(format!("ublk attach {volume}: {}", units::chain(&e))))?;
        attach::record(config::Attach::Ublk, &dev);
        Ok(dev)
    }

    fn supervise(
        &self,
        d: Arc<Daemon>,
        reaper: Arc<Reaper>,
        started: Started,
    ) -> Result<JoinHandle<()>, PoolError> {
        std::thread::Builder::new()
            .name("pool-supervisor".into())
            .spawn(move || pool::supervise(d, reaper, started.exit))
            .map_err(|e| fail(format!("supervisor thread: {e}")))
    }

    fn wait_block_device(&self, name: &str) -> Result<(), PoolError> {
        wait::block_device(name).map(|_| ()).map_err(|e| fail(e.to_string()))
    }

    fn unlock_store(
        &self,
        dev: &Path,
        key: &KeySource,
        reaper: &Reaper,
        step: &dyn Fn(&str),
    ) -> Result<(PathBuf, bool, bool), PoolError> {
        crate::luks::unlock_store(dev, key, reaper, step)
    }

    fn probe(&self, dev: &Path) -> std::io::Result<Contents> {
        pool::probe(dev)
    }

    fn mkdir(&self, path: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn mount_xfs(&self, dev: &Path, prjquota: bool) -> std::io::Result<()> {
        use rustix::mount::{mount, MountFlags};
        let data = if prjquota { Some(c"prjquota") } else { None };
        Ok(mount(dev, MOUNT, "xfs", MountFlags::NOATIME, data)?)
    }
}
