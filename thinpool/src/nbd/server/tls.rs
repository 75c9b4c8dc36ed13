//! NBD over TLS: certificates in nbdkit's and qemu's directory layout, the rustls server
//! configuration (TLS 1.3 only), and the relay that carries a TLS connection's transmission
//! phase.
//!
//! ```text
//! DIR/ca-cert.pem      CA that signs client certificates (needed with verify-peer)
//! DIR/server-cert.pem  the server's certificate chain
//! DIR/server-key.pem   its private key (PKCS#8, PKCS#1 or SEC1)
//! ```
//!
//! The handshake's STARTTLS (NBD spec, "TLS support") runs rustls over the socket itself (see
//! [`super::negotiate`]). Transmission does not: the plaintext path reads and writes the raw
//! socket from several workers at once and splices payloads out of it, which an encrypted
//! stream cannot do. A TLS connection's transmission is therefore served by the same
//! [`super::conn`] code over one end of a unix socketpair, and [`relay`] moves bytes between
//! the other end and the TLS session (the way nbd-client's userspace TLS relay feeds the
//! kernel). Plaintext connections never pass through here.
//!
//! rustls has no external pre-shared keys (rustls/rustls#174), so TLS-PSK (nbdkit's
//! `--tls-psk`) is not offered: X.509 only.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::event::{poll, PollFd, PollFlags};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use thiserror::Error;

use super::Sock;

/// When TLS is offered or demanded (nbdkit's `--tls=off|on|require`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// STARTTLS is refused (`NBD_REP_ERR_POLICY`).
    Off,
    /// Clients may upgrade with STARTTLS or stay in plaintext.
    On,
    /// Only STARTTLS and ABORT are accepted before TLS (the spec's forced TLS).
    Require,
}

/// TLS as a server offers it: the mode and the rustls configuration.
#[derive(Clone)]
pub struct Tls {
    pub mode: TlsMode,
    pub config: Arc<ServerConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("mode", &self.mode).finish_non_exhaustive()
    }
}

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("reading {path}")]
    Pem { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("CA certificate in {path} not usable")]
    Ca { path: PathBuf, source: rustls::Error },
    #[error("client verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("server certificate or key rejected: {0}")]
    Config(rustls::Error),
}

/// Loads a certificates directory (see the module doc). With `verify_peer` every client must
/// present a certificate signed by `ca-cert.pem`; without it no client certificate is asked.
pub fn load(dir: &Path, verify_peer: bool) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs(&dir.join("server-cert.pem"))?;
    let key_path = dir.join("server-key.pem");
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|source| TlsError::Pem { path: key_path, source })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?;
    let builder = if verify_peer {
        let ca_path = dir.join("ca-cert.pem");
        let mut roots = RootCertStore::empty();
        for c in read_certs(&ca_path)? {
            roots.add(c).map_err(|source| TlsError::Ca { path: ca_path.clone(), source })?;
        }
        let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
        builder.with_client_cert_verifier(v)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(certs, key).map_err(TlsError::Config)?;
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem { path: path.to_owned(), source };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

/// Plaintext read from `inner` per step; the relay reads more only once the TLS records of
/// the last step are all on the wire, which bounds its memory.
const STEP: usize = 256 << 10;

/// Relays between the TLS session `tls` on `net` and `inner`, the socketpair end whose peer
/// runs transmission. Returns when both directions are done: the client's EOF (or close_notify)
/// is passed on as a write shutdown of `inner`, and `inner`'s EOF ends the TLS session with
/// close_notify. Bytes rustls already decrypted during the handshake go first.
pub(crate) fn relay(net: &Sock, mut tls: ServerConnection, inner: &UnixStream) -> io::Result<()> {
    rustix::io::ioctl_fionbio(net, true)?;
    inner.set_nonblocking(true)?;
    tls.set_buffer_limit(None);
    // Decrypted client bytes not yet taken by `inner`.
    let mut to_inner: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; STEP];
    let mut net_eof = false;
    let mut inner_eof = false;
    loop {
        // Client → inner: take everything rustls has decrypted.
        loop {
            match tls.reader().read(&mut buf) {
                Ok(0) => {
                    net_eof = true; // close_notify
                    break;
                }
                Ok(n) => to_inner.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // The client hung up without close_notify: for NBD that is just EOF.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    net_eof = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        while !to_inner.is_empty() {
            match (&mut &*inner).write(&to_inner) {
                Ok(n) => drop(to_inner.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if net_eof && to_inner.is_empty() {
            let _ = inner.shutdown(std::net::Shutdown::Write);
        }
        // Inner → client: encrypt a step once the previous one is on the wire.
        if !inner_eof && !tls.wants_write() {
            match (&mut &*inner).read(&mut buf) {
                Ok(0) => {
                    inner_eof = true;
                    tls.send_close_notify();
                }
                Ok(n) => tls.writer().write_all(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        while tls.wants_write() {
            match tls.write_tls(&mut { net }) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if inner_eof && !tls.wants_write() {
            net.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        // Wait for whatever can move next.
        let mut net_ev = PollFlags::empty();
        if !net_eof && to_inner.len() < STEP {
            net_ev |= PollFlags::IN;
        }
        if tls.wants_write() {
            net_ev |= PollFlags::OUT;
        }
        let mut inner_ev = PollFlags::empty();
        if !inner_eof && !tls.wants_write() {
            inner_ev |= PollFlags::IN;
        }
        if !to_inner.is_empty() {
            inner_ev |= PollFlags::OUT;
        }
        // A socket that hung up reports HUP whatever is asked: only sockets that something
        // waits on are polled, or the poll would spin.
        let mut fds = Vec::with_capacity(2);
        if !inner_ev.is_empty() {
            fds.push(PollFd::new(inner, inner_ev));
        }
        let net_at = fds.len();
        if !net_ev.is_empty() {
            fds.push(PollFd::new(net, net_ev));
        }
        if fds.is_empty() {
            return Ok(()); // nothing can move any more
        }
        match poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let net_rev = fds.get(net_at).map_or(PollFlags::empty(), |f| f.revents());
        if net_rev.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) && !net_eof {
            match tls.read_tls(&mut { net }) {
                Ok(0) => net_eof = true,
                Ok(_) => {
                    if let Err(e) = tls.process_new_packets() {
                        // Send the alert rustls queued, then give up on the session.
                        let _ = tls.write_tls(&mut { net });
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
