//! NBD over TLS with real clients: nbdinfo, nbdcopy (libnbd, GnuTLS), qemu-img and qemu-io
//! (qemu's tls-creds-x509), with x509 certificates made by GnuTLS's certtool in the test.
//! Client certificates are checked with verify-peer; plaintext is refused under require.

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::client::*;
use support::nbd::*;
use thinpool::export::mem::{MemCatalog, MemExport};
use thinpool::nbd::proto::msg::*;
use thinpool::nbd::proto::opt::*;
use thinpool::nbd::proto::wire::*;
use thinpool::nbd::server::tls::{self, Tls, TlsMode};
use thinpool::nbd::ServerOptions;

const MIB: u64 = 1 << 20;
const T: Duration = Duration::from_secs(60);

/// A CA, a server certificate for 127.0.0.1 and a client certificate, laid out for nbdkit,
/// qemu and libnbd alike (`ca-cert.pem`, `server-*.pem`, `client-*.pem`), plus a directory
/// whose client certificate comes from another CA and one with no client certificate.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn good(&self) -> String {
        self.dir.path().join("good").display().to_string()
    }
    fn rogue(&self) -> String {
        self.dir.path().join("rogue").display().to_string()
    }
    fn anonymous(&self) -> String {
        self.dir.path().join("anon").display().to_string()
    }
}

fn certtool(args: &[&str]) {
    ok("certtool", args, T);
}

fn template(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

/// Makes a CA in `dir` (ca-key.pem, ca-cert.pem).
fn make_ca(dir: &Path, cn: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let key = dir.join("ca-key.pem").display().to_string();
    let cert = dir.join("ca-cert.pem").display().to_string();
    let t = template(
        dir,
        "ca.info",
        &format!("cn = {cn}\nca\ncert_signing_key\nexpiration_days = 30\n"),
    );
    certtool(&["--generate-privkey", "--outfile", &key]);
    certtool(&[
        "--generate-self-signed",
        "--load-privkey",
        &key,
        "--template",
        &t,
        "--outfile",
        &cert,
    ]);
}

/// Issues `NAME-key.pem`/`NAME-cert.pem` in `out`, signed by the CA in `ca`.
fn issue(ca: &Path, out: &Path, name: &str, body: &str) {
    let key = out.join(format!("{name}-key.pem")).display().to_string();
    let cert = out.join(format!("{name}-cert.pem")).display().to_string();
    let t = template(out, &format!("{name}.info"), body);
    certtool(&["--generate-privkey", "--outfile", &key]);
    certtool(&[
        "--generate-certificate",
        "--load-privkey",
        &key,
        "--load-ca-certificate",
        &ca.join("ca-cert.pem").display().to_string(),
        "--load-ca-privkey",
        &ca.join("ca-key.pem").display().to_string(),
        "--template",
        &t,
        "--outfile",
        &cert,
    ]);
}

const SERVER: &str = "cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\n\
                      tls_www_server\nsigning_key\nencryption_key\nexpiration_days = 30\n";
const CLIENT: &str =
    "cn = lamina test client\ntls_www_client\nsigning_key\nencryption_key\nexpiration_days = 30\n";

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    make_ca(&good, "lamina test CA");
    issue(&good, &good, "server", SERVER);
    issue(&good, &good, "client", CLIENT);
    // Another CA's client, trusting the right CA for the server.
    let rogue = dir.path().join("rogue");
    make_ca(&rogue, "someone else's CA");
    issue(&rogue, &rogue, "client", CLIENT);
    std::fs::copy(good.join("ca-cert.pem"), rogue.join("ca-cert.pem")).unwrap();
    // No client certificate at all.
    let anon = dir.path().join("anon");
    std::fs::create_dir_all(&anon).unwrap();
    std::fs::copy(good.join("ca-cert.pem"), anon.join("ca-cert.pem")).unwrap();
    Pki { dir }
}

fn serve_tls(pki: &Pki, mode: TlsMode, verify_peer: bool) -> Running {
    let cat = Arc::new(MemCatalog::new());
    cat.insert("vol", "", Arc::new(MemExport::new(64 * MIB)));
    let config = tls::load(Path::new(&pki.good()), verify_peer).expect("loading certificates");
    let opts = ServerOptions { tls: Some(Tls { mode, config }), ..ServerOptions::default() };
    start(cat, opts)
}

fn nbds(srv: &Running, certs: &str) -> String {
    format!("nbds://{}/vol?tls-certificates={certs}", srv.addr)
}

fn qemu_tls_args(srv: &Running, certs: &str) -> Vec<String> {
    vec![
        "--object".into(),
        format!("tls-creds-x509,id=tls0,dir={certs},endpoint=client"),
        "--image-opts".into(),
        format!("driver=nbd,host=127.0.0.1,port={},export=vol,tls-creds=tls0", srv.addr.port()),
    ]
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn nbdinfo_nbdcopy_qemu_img_and_qemu_io_over_tls_with_client_certificates() {
    let pki = pki();
    let srv = serve_tls(&pki, TlsMode::Require, true);
    let info = ok("nbdinfo", &["--json", &nbds(&srv, &pki.good())], T);
    assert!(info.contains(&format!("\"export-size\": {}", 64 * MIB)), "{info}");
    // nbdcopy: a file in, and back out, over TLS.
    let work = scratch();
    let src = work.path().join("src.img");
    let back = work.path().join("back.img");
    let data = random_bytes(8 * MIB as usize, 7);
    std::fs::write(&src, &data).unwrap();
    let uri = nbds(&srv, &pki.good());
    ok("nbdcopy", &[src.to_str().unwrap(), &uri], T);
    ok("nbdcopy", &[&uri, back.to_str().unwrap()], T);
    assert!(std::fs::read(&back).unwrap()[..data.len()] == data[..], "nbdcopy round trip");
    // qemu-img and qemu-io with qemu's x509 credentials.
    let q = qemu_tls_args(&srv, &pki.good());
    let q: Vec<&str> = q.iter().map(String::as_str).collect();
    let info = ok("qemu-img", &[&["info"], &q[..]].concat(), T);
    assert!(info.contains("virtual size: 64 MiB"), "{info}");
    let io = ok(
        "qemu-io",
        &[&q[..], &["-c", "write -P 0xa5 32M 1M", "-c", "read -P 0xa5 32M 1M"]].concat(),
        T,
    );
    assert!(!io.contains("Pattern verification failed"), "{io}");
    assert!(io.contains("read 1048576/1048576 bytes"), "{io}");
    // What qemu-io wrote is there for the next client.
    let out = work.path().join("tail.img");
    ok("nbdcopy", &[&uri, out.to_str().unwrap()], T);
    let img = std::fs::read(&out).unwrap();
    assert!(img[(32 * MIB) as usize..(33 * MIB) as usize].iter().all(|&b| b == 0xa5));
}

#[test]
fn clients_without_a_valid_certificate_are_refused_with_verify_peer() {
    let pki = pki();
    let srv = serve_tls(&pki, TlsMode::Require, true);
    for (who, certs) in [("no client certificate", pki.anonymous()), ("another CA", pki.rogue())] {
        let out = run("nbdinfo", &[&nbds(&srv, &certs)], T);
        let t = text(&out);
        assert!(!out.status.success(), "{who}: nbdinfo must fail:\n{t}");
        assert!(t.contains("TLS fatal alert"), "{who}: the server ends the TLS handshake: {t}");
        let q = qemu_tls_args(&srv, &certs);
        let q: Vec<&str> = q.iter().map(String::as_str).collect();
        let out = run("qemu-img", &[&["info"], &q[..]].concat(), T);
        assert!(!out.status.success(), "{who}: qemu-img must fail:\n{}", text(&out));
    }
    // Without verify-peer the same anonymous client is served.
    let srv = serve_tls(&pki, TlsMode::Require, false);
    ok("nbdinfo", &[&nbds(&srv, &pki.anonymous())], T);
}

#[test]
fn plaintext_is_refused_under_require_and_served_under_on() {
    let pki = pki();
    let srv = serve_tls(&pki, TlsMode::Require, false);
    let out = run("nbdinfo", &[&srv.uri("vol")], T);
    let t = text(&out);
    assert!(!out.status.success(), "plaintext nbdinfo must fail under require:\n{t}");
    // libnbd falls back to simple replies (STRUCTURED_REPLY got ERR_TLS_REQD), then GO fails;
    // the codes themselves are checked on the wire in forced_tls_rules_on_the_wire.
    assert!(t.contains("without TLS") && t.contains("opt_go"), "{t}");
    let out = run("qemu-img", &["info", &srv.uri("vol")], T);
    assert!(!out.status.success(), "plaintext qemu-img must fail:\n{}", text(&out));
    // Under `on` both are served.
    let srv = serve_tls(&pki, TlsMode::On, false);
    ok("nbdinfo", &[&srv.uri("vol")], T);
    ok("nbdinfo", &[&nbds(&srv, &pki.anonymous())], T);
}

/// A rustls client session over `tcp` for the raw protocol tests, with the good client cert.
fn tls_client(
    pki: &Pki,
    tcp: std::net::TcpStream,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let dir = Path::new(&pki.dir.path()).join("good");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(dir.join("ca-cert.pem")).unwrap()).unwrap();
    let certs = vec![CertificateDer::from_pem_file(dir.join("client-cert.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(dir.join("client-key.pem")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

fn error_code(r: &[OptionReply]) -> Option<u32> {
    match r {
        [OptionReply::Error { code, .. }] => Some(*code),
        _ => None,
    }
}

#[test]
fn forced_tls_rules_on_the_wire() {
    let pki = pki();
    let srv = serve_tls(&pki, TlsMode::Require, true);
    let mut s = hello(srv.addr);
    let go = ClientOption::Go(ExportQuery { name: "vol".into(), info: vec![] });
    for o in [
        ClientOption::List,
        ClientOption::StructuredReply,
        ClientOption::Info(ExportQuery { name: "vol".into(), info: vec![] }),
        go.clone(),
        ClientOption::Unknown { option: 77, data: vec![] },
    ] {
        assert_eq!(error_code(&option(&mut s, &o)), Some(REP_ERR_TLS_REQD), "{o:?} before TLS");
    }
    // EXPORT_NAME has no error reply: before TLS it is a disconnect.
    s.write_all(&encode_option(&ClientOption::ExportName("vol".into()))).unwrap();
    assert!(closed(&mut s), "EXPORT_NAME before TLS must disconnect");
    // ABORT is served in plaintext.
    let mut s = hello(srv.addr);
    assert_eq!(option(&mut s, &ClientOption::Abort), [OptionReply::Ack]);
    // STARTTLS, then everything works over TLS; a second STARTTLS is invalid.
    let mut s = hello(srv.addr);
    assert_eq!(option(&mut s, &ClientOption::StartTls), [OptionReply::Ack]);
    let mut t = tls_client(&pki, s);
    assert_eq!(error_code(&option(&mut t, &ClientOption::StartTls)), Some(REP_ERR_INVALID));
    let r = option(&mut t, &go);
    assert_eq!(r.last(), Some(&OptionReply::Ack), "GO over TLS: {r:?}");
    // Transmission over TLS: a write and a read back (simple replies).
    let mut out = Vec::new();
    let req = Request { flags: 0, command: CMD_WRITE, cookie: 1, offset: 4096, length: 5 };
    encode_request(HeaderMode::Compact, &req, &mut out);
    out.extend_from_slice(b"hello");
    let req = Request { flags: 0, command: CMD_READ, cookie: 2, offset: 4096, length: 5 };
    encode_request(HeaderMode::Compact, &req, &mut out);
    t.write_all(&out).unwrap();
    let mut rep = [0u8; 16];
    t.read_exact(&mut rep).unwrap();
    assert!(matches!(
        decode_reply_header(&rep).unwrap(),
        ReplyHeader::Simple { error: 0, cookie: 1 }
    ));
    t.read_exact(&mut rep).unwrap();
    assert!(matches!(
        decode_reply_header(&rep).unwrap(),
        ReplyHeader::Simple { error: 0, cookie: 2 }
    ));
    let mut data = [0u8; 5];
    t.read_exact(&mut data).unwrap();
    assert_eq!(&data, b"hello");
}

#[test]
fn starttls_forgets_what_plaintext_negotiated() {
    let pki = pki();
    let srv = serve_tls(&pki, TlsMode::On, false);
    let mut s = hello(srv.addr);
    assert_eq!(option(&mut s, &ClientOption::StructuredReply), [OptionReply::Ack]);
    assert_eq!(option(&mut s, &ClientOption::StartTls), [OptionReply::Ack]);
    let mut t = tls_client(&pki, s);
    // Structured replies were negotiated in plaintext only: meta contexts need them again.
    let q = MetaQuery { export: "vol".into(), queries: vec!["base:allocation".into()] };
    let r = option(&mut t, &ClientOption::SetMetaContext(q.clone()));
    assert_eq!(error_code(&r), Some(REP_ERR_INVALID), "state survived STARTTLS: {r:?}");
    assert_eq!(option(&mut t, &ClientOption::StructuredReply), [OptionReply::Ack]);
    assert_eq!(option(&mut t, &ClientOption::SetMetaContext(q)).len(), 2);
}

#[test]
fn starttls_without_tls_configured_is_refused_by_policy() {
    let cat = Arc::new(MemCatalog::new());
    cat.insert("vol", "", Arc::new(MemExport::new(MIB)));
    let srv = start(cat, ServerOptions::default());
    let mut s = hello(srv.addr);
    assert_eq!(error_code(&option(&mut s, &ClientOption::StartTls)), Some(REP_ERR_POLICY));
}
