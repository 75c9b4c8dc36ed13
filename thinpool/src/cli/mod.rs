//! The `thinpool` command line: LVM / thin-tools-like verbs over a pool directory.
//!
//! ```text
//! cli/mod.rs     argument definitions and dispatch
//! cli/pool.rs    init, create, snapshot, remove, list, status (the management verbs)
//! cli/group.rs   init --device, extend, resize, events, dmsetup-table (device-backed pools)
//! serve          daemon over the service (see thinpool::service)
//! cli/image.rs   import, export (raw images in and out of volumes)
//! cli/meta.rs    check, dump, restore (metadata tools; they never need a running pool)
//! cli/size.rs    size parsing and printing;  cli/output.rs  list/status formats
//! ```
//!
//! Management verbs go through the [`pool::Manage`] trait, so a later client that forwards
//! them to a running daemon implements that trait and the verbs stay as they are; the daemon
//! itself (`thinpool serve`) becomes one more variant of [`Command`].

mod group;
mod image;
mod meta;
pub mod output;
mod pool;
mod protect;
mod serve;
pub mod size;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Thin-provisioning pool with dm-thin-compatible metadata.
#[derive(Debug, Parser)]
#[command(name = "thinpool", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new pool in DIR (DIR/metadata, DIR/data, name table).
    Init(InitArgs),
    /// Create an empty thin volume.
    Create(CreateArgs),
    /// Mark a volume as created for export (offered under `thinpool serve --exports flagged`).
    Offer(OfferArgs),
    /// Snapshot a volume as a new volume.
    Snapshot(SnapshotArgs),
    /// Remove a volume and free the blocks only it used.
    Remove(RemoveArgs),
    /// List volumes (like lvs).
    List(ListArgs),
    /// Show pool space and settings (like docker info's devicemapper section).
    Status(StatusArgs),
    /// Write a raw image file into a volume (creating it sized to the file if absent).
    Import(ImportArgs),
    /// Write a volume out as a raw, sparse image file.
    Export(ExportArgs),
    /// Check the pool metadata; prints every damage with its place, exit 1 if any.
    Check(CheckArgs),
    /// Print the pool metadata as thin_dump XML.
    Dump(DumpArgs),
    /// Build pool metadata from thin_dump XML.
    Restore(RestoreArgs),
    /// Salvage every readable mapping of damaged metadata into fresh metadata (thin_repair).
    Repair(RepairArgs),
    /// Add a device to a device-backed pool's volume group (vgextend; autoextend may grow
    /// the pool into it at once).
    Extend(ExtendArgs),
    /// Grow the pool's data and/or metadata (lvextend; a file pool's files grow).
    Resize(ResizeArgs),
    /// Print the autoextend event log.
    Events(EventsArgs),
    /// Print the device-mapper tables of a device-backed pool and its volumes.
    DmsetupTable(DmsetupTableArgs),
    /// Reserve or release the pool's metadata snapshot (dm-thin's reserve_metadata_snap),
    /// a consistent view `thin_dump --metadata-snap` reads while the pool serves.
    MetadataSnap(MetadataSnapArgs),
    /// The ranges where two thins (volume names or thin ids) map differently.
    Delta(DeltaArgs),
    /// Write a volume (a snapshot) to stdout as a stream: whole, or only what differs from
    /// an older snapshot (--from).
    Send(SendArgs),
    /// Read a stream from stdin into a new volume (committed only if all of it checks out).
    Receive(ReceiveArgs),
    /// Serve the pool's volumes over NBD (with autoextend and a control socket) until
    /// SIGTERM/SIGINT.
    Serve(ServeArgs),
    /// Attach a volume as a ublk block device of this machine, served by the running
    /// `thinpool serve`; prints the device (/dev/ublkbN).
    Attach(AttachArgs),
    /// Detach a volume's ublk device (refused while it is in use, e.g. mounted).
    Detach(AttachArgs),
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    #[command(flatten)]
    pub pool: PoolDir,
    /// Volume name.
    pub name: String,
    /// The daemon's state directory, when POOL is a device list (`thinpool serve
    /// --state-dir`); a pool or group directory is its own.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// The pool directory every verb takes first.
#[derive(Debug, Args)]
pub struct PoolDir {
    /// Pool directory (metadata + data files, or links to a volume group's devices), or a
    /// comma-separated device list.
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub pool: PoolDir,
    /// Size of the data file (bytes, or K/M/G/T); not with --device.
    #[arg(long, value_parser = size_arg, required_unless_present = "device", conflicts_with = "device")]
    pub data_size: Option<u64>,
    /// Lay a volume group over these devices (Docker's direct-lvm layout) instead of files.
    #[arg(long, value_delimiter = ',')]
    pub device: Vec<PathBuf>,
    /// A dm.* option (dm.key=value), repeatable. A file pool keeps them in DIR/config.toml.
    #[arg(long)]
    pub opt: Vec<String>,
    /// A TOML file of dm.* options ([dm] and [lamina] tables).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Overwrite devices that hold other signatures.
    #[arg(long, requires = "device")]
    pub force: bool,
    /// Size of the metadata file (default: 48 bytes per data block, at least 2 MiB).
    #[arg(long, value_parser = size_arg)]
    pub metadata_size: Option<u64>,
    /// Data block size: a multiple of 64K from 64K to 1G.
    #[arg(long, value_parser = size_arg, default_value = "64K")]
    pub block_size: u64,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub pool: PoolDir,
    /// Volume name: up to 128 of [A-Za-z0-9._-], not starting with '-'.
    pub name: String,
    /// Virtual size (bytes, or K/M/G/T).
    #[arg(long, value_parser = size_arg)]
    pub size: u64,
    /// Create it for export: offered to NBD clients even by a daemon serving
    /// `--exports flagged` (the appliance's default).
    #[arg(long)]
    pub export: bool,
    /// Start the volume with a LUKS2 header made by `cryptsetup luksFormat` (Debian's
    /// cryptsetup-bin), so `cryptsetup open` and dm-crypt read it. Needs --key-file.
    #[arg(long, requires = "key_file")]
    pub encrypt: bool,
    /// The key (a file readable only by its owner; cryptsetup reads all of it).
    #[arg(long, requires = "encrypt")]
    pub key_file: Option<PathBuf>,
    /// cryptsetup's --iter-time: milliseconds the key derivation takes when opening.
    #[arg(long, requires = "encrypt")]
    pub iter_time: Option<u32>,
}

#[derive(Debug, Args)]
pub struct OfferArgs {
    #[command(flatten)]
    pub pool: PoolDir,
    /// The volume.
    pub name: String,
    /// Take the mark away instead.
    #[arg(long)]
    pub off: bool,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub pool: PoolDir,
    /// The volume to snapshot.
    pub origin: String,
    /// Name of the new snapshot volume.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub pool: PoolDir,
    pub name: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub pool: PoolDir,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// lvs-like: a pool row with Data% and Meta%, then the volumes with open handles.
    #[arg(long)]
    pub lvs: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pool: PoolDir,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub pool: PoolDir,
    /// Volume to write into (created, sized to the file, if it does not exist).
    pub name: String,
    /// Raw image file to read.
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub pool: PoolDir,
    pub name: String,
    /// Raw image file to write (created or truncated; unmapped ranges stay holes).
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Pool directory, or a metadata file/device.
    pub dir: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Accept space-map hints that are off (nr_allocated, nr_free, none_free_before), as
    /// Debian's thin_restore 0.9.0 leaves them; every other damage still fails.
    #[arg(long)]
    pub allow_hints: bool,
    /// When the metadata is clean, clear the superblock's needs_check flag (as
    /// thin_check --clear-needs-check-flag); never while a daemon serves the pool.
    #[arg(long)]
    pub clear_needs_check_flag: bool,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Pool directory, or a metadata file/device.
    pub dir: PathBuf,
    /// Write the XML here instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Dump what a repair would salvage (damaged nodes skipped) instead of failing on damage.
    #[arg(long)]
    pub repair: bool,
}

#[derive(Debug, Args)]
pub struct RepairArgs {
    /// Pool directory, or a metadata file/device (read only).
    pub dir: PathBuf,
    /// Where the fresh metadata goes: a new file (sized as the input) or an existing
    /// file/device; never the input.
    #[arg(long, short)]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub pool: PoolDir,
    /// thin_dump XML to read.
    #[arg(long, short)]
    pub input: PathBuf,
    /// Size of the metadata file when DIR has none yet (default as for init).
    #[arg(long, value_parser = size_arg)]
    pub metadata_size: Option<u64>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SnapAction {
    Reserve,
    Release,
}

#[derive(Debug, Args)]
pub struct MetadataSnapArgs {
    #[command(flatten)]
    pub pool: PoolDir,
    pub action: SnapAction,
}

#[derive(Debug, Args)]
pub struct DeltaArgs {
    #[command(flatten)]
    pub pool: PoolDir,
    /// The left thin (the older one, e.g. a snapshot): volume name or thin id.
    pub thin1: String,
    /// The right thin: volume name or thin id.
    pub thin2: String,
    /// Print thin_delta 0.9.0's XML (every range, `same` included).
    #[arg(long, conflicts_with = "json")]
    pub xml: bool,
    /// Print every range as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub pool: PoolDir,
    /// The volume to send (normally a snapshot nothing writes to).
    pub snap: String,
    /// Send only what differs from this older snapshot (the receiver must hold it).
    #[arg(long)]
    pub from: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReceiveArgs {
    #[command(flatten)]
    pub pool: PoolDir,
    /// Name of the new volume.
    pub name: String,
    /// For an incremental stream: the local volume it applies to (default: the base name
    /// the stream carries).
    #[arg(long)]
    pub base: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub pool: PoolDir,
    #[command(flatten)]
    pub serve: serve::ServeOpts,
}

#[derive(Debug, Args)]
pub struct ExtendArgs {
    #[command(flatten)]
    pub pool: PoolDir,
    /// The device (or file) to add.
    #[arg(long)]
    pub device: PathBuf,
}

#[derive(Debug, Args)]
pub struct ResizeArgs {
    #[command(flatten)]
    pub pool: PoolDir,
    /// "+SIZE" to grow by, or the new total.
    #[arg(long, allow_hyphen_values = true)]
    pub data: Option<String>,
    /// "+SIZE" to grow by, or the new total.
    #[arg(long, allow_hyphen_values = true)]
    pub metadata: Option<String>,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub pool: PoolDir,
    /// Print JSON instead of lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DmsetupTableArgs {
    #[command(flatten)]
    pub pool: PoolDir,
    /// Print a shell script of `dmsetup create` commands instead.
    #[arg(long)]
    pub script: bool,
}

fn size_arg(s: &str) -> Result<u64, String> {
    size::parse_size(s).map_err(|e| e.to_string())
}

/// Runs one command. Errors come back to `main`, which prints them on one line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init(a) => pool::init(&a),
        Command::Create(a) => pool::create(&a),
        Command::Offer(a) => pool::offer(&a),
        Command::Snapshot(a) => pool::snapshot(&a),
        Command::Remove(a) => pool::remove(&a),
        Command::List(a) => pool::list(&a),
        Command::Status(a) => pool::status(&a),
        Command::Import(a) => image::import(&a),
        Command::Export(a) => image::export(&a),
        Command::Check(a) => meta::check(&a),
        Command::Dump(a) => meta::dump(&a),
        Command::Restore(a) => meta::restore(&a),
        Command::Repair(a) => meta::repair(&a),
        Command::Extend(a) => group::extend(&a),
        Command::Resize(a) => group::resize(&a),
        Command::Events(a) => group::events(&a),
        Command::DmsetupTable(a) => group::dmsetup_table(&a),
        Command::MetadataSnap(a) => protect::metadata_snap(&a),
        Command::Delta(a) => protect::delta(&a),
        Command::Send(a) => protect::send_verb(&a),
        Command::Receive(a) => protect::receive_verb(&a),
        Command::Serve(a) => {
            thinpool::daemon::serve(&a.pool.dir, a.serve.into_config())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Attach(a) => pool::attach(&a),
        Command::Detach(a) => pool::detach(&a),
    }
}

/// The error and its causes on one line, as the libraries print errors for a person.
pub fn error_line(e: &anyhow::Error) -> String {
    thinpool::units::chain(e.as_ref()).replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn errors_print_on_one_line_without_repeats() {
        let inner = anyhow::anyhow!("block 11: checksum mismatch");
        let e =
            inner.context("corrupt (block 11: checksum mismatch)").context("cannot open\nthe pool");
        assert_eq!(error_line(&e), "cannot open the pool: corrupt (block 11: checksum mismatch)");
    }

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_parse_in_arguments() {
        let c = Cli::try_parse_from(["thinpool", "init", "/p", "--data-size", "1G"]).unwrap();
        let Command::Init(a) = c.command else { panic!("not init") };
        assert_eq!((a.data_size, a.block_size, a.metadata_size), (Some(1 << 30), 64 << 10, None));
        let e = Cli::try_parse_from(["thinpool", "create", "/p", "v", "--size", "3Q"]).unwrap_err();
        assert!(e.to_string().contains("unknown unit"), "{e}");
    }
}
