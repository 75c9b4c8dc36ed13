//! Named volumes and the store as a whole: Docker's `volume create|ls|rm`, `system df` and
//! `system prune` (which ends with fstrim, so the thin pool gets the freed blocks back).
//! Volume backup and restore move their tar over the data channel ([`super::data`]).

use std::time::Duration;

use serde_json::{json, Value};

use super::error::{Kind, Result, StoreError};
use super::service::Containers;
use super::Images;
use crate::reaper::Reaper;

const BUSYBOX: &str = "/bin/busybox";

pub fn volume_create(images: &Images, name: &str) -> Result<Value> {
    images.with(|s| s.volume_create(name))?;
    Ok(json!({ "name": name }))
}

pub fn volume_list(images: &Images, containers: &Containers) -> Result<Value> {
    let used = containers.volumes_in_use();
    let names = images.with(|s| s.volumes())?;
    let du = images.with(|s| s.du())?;
    Ok(Value::Array(
        names
            .into_iter()
            .map(|n| {
                let size = du.volumes.iter().find(|(v, _)| *v == n).map_or(0, |(_, b)| *b);
                let users: Vec<&String> =
                    used.iter().filter(|(v, _)| *v == n).map(|(_, c)| c).collect();
                json!({"name": n, "driver": "local", "size": size, "containers": users})
            })
            .collect(),
    ))
}

pub fn volume_remove(images: &Images, containers: &Containers, name: &str) -> Result<Value> {
    if let Some((_, c)) = containers.volumes_in_use().into_iter().find(|(v, _)| v == name) {
        // Docker's wording.
        return Err(StoreError::new(
            Kind::Conflict,
            format!("remove {name}: volume is in use - [{c}]"),
        ));
    }
    images.with(|s| s.volume_remove(name))?;
    Ok(json!({ "removed": name }))
}

/// `system df`: images, containers' own layers, volumes, and what the layers take once.
pub fn df(images: &Images) -> Result<Value> {
    let du = images.with(|s| s.du())?;
    let imgs: u64 = du.images.iter().map(|i| i.exclusive).sum();
    let shared: u64 = du.images.iter().map(|i| i.shared).sum();
    let ctrs: u64 = du.containers.iter().map(|(_, b)| *b).sum();
    let vols: u64 = du.volumes.iter().map(|(_, b)| *b).sum();
    Ok(json!({
        "images": {"count": du.images.len(), "size": du.layers_total, "exclusive": imgs, "shared": shared},
        "containers": {"count": du.containers.len(), "size": ctrs},
        "volumes": {"count": du.volumes.len(), "size": vols},
    }))
}

/// `system prune [-a] [--volumes]`: stopped containers, unused images (dangling ones, or
/// with `all` every image no container uses), their layers and blobs, unused volumes with
/// `volumes`; then fstrim of the store's XFS, which discards the freed blocks down to the pool.
pub fn prune(
    images: &Images,
    containers: &Containers,
    reaper: &Reaper,
    all: bool,
    volumes: bool,
) -> Result<Value> {
    let removed = containers.prune_stopped();
    let r = images.with(|s| s.prune(all, volumes))?;
    // Trimming the store hands the blocks the prune freed back to the thin pool.
    let argv = [BUSYBOX, "fstrim", "-v", crate::pool::MOUNT].map(str::to_owned);
    let trim = crate::pool::run(reaper, &argv, Duration::from_secs(300))
        .map_err(|e| StoreError::io("fstrim", e))?;
    Ok(json!({
        "containers": removed,
        "images": r.images.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        "layers": r.layers,
        "blobs": r.blobs,
        "volumes": r.volumes,
        "reclaimed": r.bytes,
        "fstrim": trim.trim(),
    }))
}
