//! `thinpool serve`'s flags, parsed into the library's [`ServeConfig`].

use std::path::PathBuf;
use thinpool::daemon::ServeConfig;
use thinpool::export::pool::ExportScope;
use thinpool::nbd::server::allow::{Cidr, ExportAllow};
use thinpool::nbd::server::tls::TlsMode;

/// The flags of `thinpool serve`; see [`ServeConfig`] for what they configure.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeOpts {
    /// TCP address to serve NBD on; "none" disables TCP.
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub listen: String,
    /// Also serve NBD on this unix socket.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Volumes exported read-only (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    pub read_only: Vec<String>,
    /// TCP clients allowed to connect (comma-separated CIDRs; default: everyone). Unix-socket
    /// clients are always allowed.
    #[arg(long, value_delimiter = ',')]
    pub allow: Vec<Cidr>,
    /// Only these TCP clients see EXPORT (EXPORT=CIDR[,CIDR...]; repeatable). Others find it
    /// unknown and unlisted.
    #[arg(long, value_name = "EXPORT=CIDRS")]
    pub export_allow: Vec<ExportAllow>,
    /// Volumes never offered to NBD clients, only to --kernel-fd attaches (comma-separated).
    /// Volumes attached with --kernel-fd are always read-only to NBD clients.
    #[arg(long, value_delimiter = ',')]
    pub local_only: Vec<String>,
    /// Which volumes NBD clients see: all, or flagged (only volumes created for export, with
    /// `thinpool create --export` or `thinpool offer`). This machine's own attaches (ublk,
    /// --kernel-fd) reach every volume either way.
    #[arg(long, value_enum, default_value_t = ExportsArg::All)]
    pub exports: ExportsArg,
    /// Most NBD connections served at once.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Most NBD connections one client address may hold at once.
    #[arg(long, default_value_t = 32)]
    pub max_per_address: usize,
    /// NBD over TLS (STARTTLS, TLS 1.3): off, on (clients may upgrade) or require.
    #[arg(long, value_enum, default_value_t = TlsArg::Off)]
    pub tls: TlsArg,
    /// Directory with ca-cert.pem, server-cert.pem and server-key.pem (nbdkit's and qemu's
    /// layout).
    #[arg(long, value_name = "DIR")]
    pub tls_certificates: Option<PathBuf>,
    /// Require a client certificate signed by the directory's ca-cert.pem.
    #[arg(long)]
    pub tls_verify_peer: bool,
    /// Worker threads per NBD connection.
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    /// Where the lock, control socket and event log live when POOL is a device list (a pool
    /// or group directory keeps them inside itself).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// File pools: let autoextend grow the data file up to this size (e.g. 100G).
    #[arg(long, value_parser = data_max_arg)]
    pub data_max: Option<thinpool::units::Bytes>,
    /// Serve EXPORT to the kernel nbd client on inherited socket FD (no handshake; see
    /// daemon::kernel). Repeatable.
    #[arg(long = "kernel-fd", value_name = "FD:EXPORT")]
    pub kernel_fd: Vec<thinpool::daemon::kernel::KernelFd>,
    /// Set PR_SET_IO_FLUSHER and mlockall: for a daemon whose clients' filesystems live in
    /// the same machine (the appliance).
    #[arg(long)]
    pub io_flusher: bool,
}

/// `--exports` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportsArg {
    All,
    Flagged,
}

/// `--tls` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsArg {
    Off,
    On,
    Require,
}

fn data_max_arg(s: &str) -> Result<thinpool::units::Bytes, String> {
    super::size::parse_size(s).map(thinpool::units::Bytes::new).map_err(|e| e.to_string())
}

impl ServeOpts {
    pub fn into_config(self) -> ServeConfig {
        ServeConfig {
            listen: self.listen,
            socket: self.socket,
            read_only: self.read_only,
            allow: self.allow,
            export_allow: self.export_allow,
            local_only: self.local_only,
            exports: match self.exports {
                ExportsArg::All => ExportScope::All,
                ExportsArg::Flagged => ExportScope::Flagged,
            },
            max_connections: self.max_connections,
            max_per_address: self.max_per_address,
            tls: match self.tls {
                TlsArg::Off => TlsMode::Off,
                TlsArg::On => TlsMode::On,
                TlsArg::Require => TlsMode::Require,
            },
            tls_certificates: self.tls_certificates,
            tls_verify_peer: self.tls_verify_peer,
            workers: self.workers,
            state_dir: self.state_dir,
            data_max: self.data_max,
            kernel_fd: self.kernel_fd,
            io_flusher: self.io_flusher,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_config_parses_like_the_cli() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeOpts,
        }
        let c = Cli::parse_from(["x", "--read-only", "a,b", "--allow", "10.0.0.0/8,::1"])
            .serve
            .into_config();
        assert_eq!(c.listen, "127.0.0.1:10809");
        assert_eq!(c.read_only, ["a", "b"]);
        let o = c.server_options().unwrap();
        assert!(o.allow.allows("10.1.2.3".parse().unwrap()));
        assert!(!o.allow.allows("192.168.0.1".parse().unwrap()));
        assert!(o.read_only.contains("b"));
        let c = Cli::parse_from(["x", "--listen", "none"]).serve.into_config();
        assert_eq!(c.tcp_addr().unwrap(), None);
        let Err(e) = Cli::try_parse_from(["x", "--allow", "10.0.0.0/99"]) else {
            panic!("--allow 10.0.0.0/99 accepted");
        };
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(e.to_string().contains("prefix is longer than the address"), "{e}");
        let c = Cli::parse_from(["x", "--tls", "require", "--max-per-address", "3"]);
        assert_eq!(c.serve.max_per_address, 3);
        let err = c.serve.into_config().server_options().unwrap_err().to_string();
        assert!(err.contains("--tls needs --tls-certificates"), "{err}");
    }
}
