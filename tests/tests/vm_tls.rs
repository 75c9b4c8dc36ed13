//! VM tier: the appliance booted with an NBD TLS config disk (what `lamina run --nbd-tls DIR`
//! attaches) serves NBD only over TLS with client certificates, through the forwarded port:
//! nbdcopy round-trips a volume over TLS; plaintext and a client without a certificate are
//! refused; the guest's own `store` (attached by its kernel) is neither listed nor openable
//! from the host, and only volumes created for export are offered.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::json;
use tests::{host_run, Opts, TestVm};

fn certtool(args: &[&str]) -> Result<()> {
    host_run(Command::new("certtool").args(args)).map(drop)
}

/// CA, a server certificate for 127.0.0.1 and a client certificate in `dir` (the layout
/// nbdkit, qemu and libnbd share), and `anon/` with only the CA.
fn make_pki(dir: &Path) -> Result<()> {
    let s = |p: &str| dir.join(p).display().to_string();
    std::fs::write(
        dir.join("ca.info"),
        "cn = vm CA\nca\ncert_signing_key\nexpiration_days = 30\n",
    )?;
    std::fs::write(
        dir.join("server.info"),
        "cn = localhost\nip_address = 127.0.0.1\ntls_www_server\nsigning_key\nencryption_key\nexpiration_days = 30\n",
    )?;
    std::fs::write(
        dir.join("client.info"),
        "cn = host\ntls_www_client\nsigning_key\nencryption_key\nexpiration_days = 30\n",
    )?;
    certtool(&["--generate-privkey", "--outfile", &s("ca-key.pem")])?;
    certtool(&[
        "--generate-self-signed",
        "--load-privkey",
        &s("ca-key.pem"),
        "--template",
        &s("ca.info"),
        "--outfile",
        &s("ca-cert.pem"),
    ])?;
    for who in ["server", "client"] {
        let key = s(&format!("{who}-key.pem"));
        certtool(&["--generate-privkey", "--outfile", &key])?;
        certtool(&[
            "--generate-certificate",
            "--load-privkey",
            &key,
            "--load-ca-certificate",
            &s("ca-cert.pem"),
            "--load-ca-privkey",
            &s("ca-key.pem"),
            "--template",
            &s(&format!("{who}.info")),
            "--outfile",
            &s(&format!("{who}-cert.pem")),
        ])?;
    }
    std::fs::create_dir_all(dir.join("anon"))?;
    std::fs::copy(dir.join("ca-cert.pem"), dir.join("anon/ca-cert.pem"))?;
    Ok(())
}

#[test]
fn vm_tls_export_through_the_forwarded_port_and_only_volumes_for_export() -> Result<()> {
    let pki = tempfile::tempdir()?;
    make_pki(pki.path())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let tls_disk = qemu::tlsdisk::build(pki.path(), &pki.path().join("tls.tar"))?;
    let opts = Opts { nbd_port: Some(port), extra_disks: vec![tls_disk], ..Opts::default() };
    let mut vm = TestVm::boot("vm_tls_export", opts)?;
    vm.wait_ready()?;
    ensure!(vm.console().contains("NBD over TLS only"), "init did not turn TLS on");
    let mut agent = vm.agent()?;
    let t = Duration::from_secs(30);
    let size: u64 = 16 << 20;
    agent.call("volume.create", Some(json!({"name": "tlsvol", "size": size})), t)?;

    let certs = pki.path().display().to_string();
    let tls =
        |name: &str, dir: &str| format!("nbds://127.0.0.1:{port}/{name}?tls-certificates={dir}");
    let work = tempfile::tempdir()?;
    let src = work.path().join("src.raw");
    let data: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(&src, &data)?;
    host_run(Command::new("nbdcopy").arg(&src).arg(tls("tlsvol", &certs)))?;
    let back = work.path().join("back.raw");
    host_run(Command::new("nbdcopy").arg(tls("tlsvol", &certs)).arg(&back))?;
    ensure!(std::fs::read(&back)? == data, "TLS round trip differs");

    // Plaintext and a client without a certificate are refused.
    let plain = Command::new("nbdinfo").arg(format!("nbd://127.0.0.1:{port}/tlsvol")).output()?;
    ensure!(!plain.status.success(), "plaintext must be refused under require");
    let anon = pki.path().join("anon").display().to_string();
    let out = Command::new("nbdinfo").arg(tls("tlsvol", &anon)).output()?;
    ensure!(!out.status.success(), "a client without a certificate must be refused");
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("TLS fatal alert"), "refused by the TLS handshake: {err}");

    // Only volumes created for export are offered: the guest's store is neither listed nor
    // openable, and qemu cannot write it. A volume made with export: false appears once it
    // is marked.
    agent.call("volume.create", Some(json!({"name": "own", "size": size, "export": false})), t)?;
    let listed = |certs: &str| -> Result<String> {
        host_run(Command::new("nbdinfo").args(["--list", "--json"]).arg(tls("", certs)))
    };
    let list = listed(&certs)?;
    ensure!(list.contains("\"tlsvol\""), "tlsvol must be listed: {list}");
    for hidden in ["store", "own"] {
        ensure!(!list.contains(&format!("\"{hidden}\"")), "{hidden} must not be listed: {list}");
    }
    let open = Command::new("nbdinfo").arg(tls("store", &certs)).output()?;
    let err = String::from_utf8_lossy(&open.stderr);
    ensure!(
        !open.status.success() && (err.contains("unknown") || err.contains("No such")),
        "store must be unknown: {err}"
    );
    let w = Command::new("qemu-io")
        .args(["--object", &format!("tls-creds-x509,id=t0,dir={certs},endpoint=client")])
        .args([
            "--image-opts",
            &format!("driver=nbd,host=127.0.0.1,port={port},export=store,tls-creds=t0"),
        ])
        .args(["-c", "write -P 0x55 0 64k"])
        .output()
        .context("qemu-io")?;
    let text =
        String::from_utf8_lossy(&w.stderr).into_owned() + &String::from_utf8_lossy(&w.stdout);
    ensure!(!w.status.success(), "qemu-io wrote to the store: {text}");
    agent.call("volume.export", Some(json!({"name": "own", "export": true})), t)?;
    let list = listed(&certs)?;
    ensure!(list.contains("\"own\""), "own must be listed once marked: {list}");
    ensure!(!list.contains("\"store\""), "store must stay unlisted: {list}");
    agent.call("volume.remove", Some(json!({"name": "own"})), t)?;

    agent.call("volume.remove", Some(json!({"name": "tlsvol"})), t)?;
    let st = vm.stop(Duration::from_secs(20))?;
    ensure!(st.success(), "QEMU exited with {st}");
    Ok(())
}
