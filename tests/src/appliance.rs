//! Where the appliance keeps things, as the guest sees them: the paths the image installs
//! the binaries at and init mounts and runs the store under (init's `pool` module names the
//! same paths for itself; the image builder puts the binaries there).

/// The pool daemon and its CLI.
pub const THINPOOL: &str = "/sbin/thinpool";
/// The layer store's CLI.
pub const LAYERSTORE: &str = "/sbin/layerstore";
/// The pool daemon's state directory: its lock, control socket and event log.
pub const POOL_STATE: &str = "/run/lamina/pool";
/// The store's XFS.
pub const STORE_MNT: &str = "/var/lib/lamina";
