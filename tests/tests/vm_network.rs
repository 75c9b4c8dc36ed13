//! VM tier: container networking as a user drives it, through the `lamina` binary in a
//! production boot (no lamina.debug), with Debian's CNI plugins doing the work in the guest.
//!
//! - a detached busybox httpd on the default network publishes its port (`run -p`) on the
//!   guest; the VM forwards it to this machine (`vm run --vm-port`) and the page is fetched
//!   here;
//! - two containers on a user network (`network create`) reach each other by name;
//! - a container's address is in host-local's store while it runs and gone after `rm`;
//! - `network rm` of a network in use is refused naming the container; unknown networks, a
//!   taken host port and a bad `-p` are clear errors.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tests::cli::Lamina;
use tests::wait::until;

/// busybox as a one-layer OCI image tagged `bb` (see [`tests::busybox_oci`]).
fn busybox_oci(dir: &Path) -> Result<PathBuf> {
    let applets = ["sh", "cat", "echo", "mkdir", "sleep", "httpd", "wget", "hostname"];
    tests::busybox_oci(dir, &applets)
}

/// A TCP port nobody listens on here now.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One HTTP/1.0 GET of `/` on 127.0.0.1:`port`; the whole response.
fn http_get(port: u16) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// A command that serves `text` as / with busybox httpd on port 80, in the foreground.
fn httpd(text: &str) -> String {
    format!("mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p 80 -h /www")
}

#[test]
fn vm_network() -> Result<()> {
    let l = Lamina::new("vm_network", Duration::from_secs(1800))?;
    let oci = busybox_oci(&l.home)?;
    let web_port = free_port()?;
    let fwd = format!("{web_port}:8080");
    let e = l.fails(&["vm", "run", "--name", "n", "--vm-port", "8080"])?;
    assert!(e.contains("invalid --vm-port \"8080\""), "{e}");
    l.ok(&["vm", "run", "--name", "n", "--detach", "--nbd-port", "0", "--vm-port", &fwd])?;
    let st = l.json(&["vm", "ctl", "n", "status"])?;
    assert_eq!(st["debug"], false, "production boot expected: {st}");
    l.ok(&["image", "load", "--vm", "n", "-q", "-i", &oci.display().to_string()])?;

    // Bad input first: each error names what is wrong.
    let e = l.fails(&["run", "--vm", "n", "-d", "--network", "ghostnet", "bb", "true"])?;
    assert!(e.contains("network ghostnet not found"), "{e}");
    let e = l.fails(&["run", "--vm", "n", "-d", "-p", "80", "bb", "true"])?;
    assert!(e.contains("invalid port mapping \"80\""), "{e}");
    let e = l.fails(&["network", "rm", "--vm", "n", "ghostnet"])?;
    assert!(e.contains("network ghostnet not found"), "{e}");
    let e = l.fails(&["network", "rm", "--vm", "n", "bridge"])?;
    assert!(e.contains("pre-defined network"), "{e}");

    // -p on the default network, fetched from here through --vm-port.
    let t = Instant::now();
    l.run_detached("n", "web", &["-p", "8080:80", "bb", "sh", "-c", &httpd("hello-from-web")])?;
    eprintln!("[vm_network] first networked container up in {:.1}s", t.elapsed().as_secs_f64());
    let web = l.ps("n", "web")?;
    assert_eq!(web["network"], "bridge", "{web}");
    let web_ip = web["ip"].as_str().context("web has no address")?.to_owned();
    assert!(web_ip.starts_with("172.17."), "default network is 172.17.0.0/16: {web}");
    let t = Instant::now();
    let page = until(Duration::from_secs(120), Duration::from_millis(250), || {
        Ok(match http_get(web_port) {
            Ok(r) if r.contains("hello-from-web") => ControlFlow::Break(r),
            other => ControlFlow::Continue(format!(
                "no page through 127.0.0.1:{web_port} -> guest 8080 -> web:80: {other:?}\n{}",
                l.console("n")
            )),
        })
    })?;
    assert!(page.starts_with("HTTP/1.") && page.contains(" 200 "), "{page}");
    eprintln!("[vm_network] page through the forward after {:.1}s", t.elapsed().as_secs_f64());
    let e =
        l.fails(&["run", "--vm", "n", "-d", "--name", "web2", "-p", "8080:80", "bb", "true"])?;
    assert!(e.contains("Bind for 0.0.0.0:8080 failed: port is already allocated"), "{e}");

    // A user network: two containers reach each other by name.
    let id = l.ok(&["network", "create", "--vm", "n", "appnet"])?;
    assert_eq!(id.trim().len(), 64, "a network id: {id}");
    let e = l.fails(&["network", "create", "--vm", "n", "appnet"])?;
    assert!(e.contains("network with name appnet already exists"), "{e}");
    let table = l.ok(&["network", "ls", "--vm", "n"])?;
    assert!(table.starts_with("NETWORK ID"), "{table}");
    for name in ["appnet", "bridge"] {
        assert!(table.lines().any(|r| r.split_whitespace().nth(1) == Some(name)), "{table}");
    }
    let nets = l.json(&["network", "ls", "--vm", "n", "--json"])?;
    let appnet = nets.as_array().into_iter().flatten().find(|n| n["name"] == "appnet");
    let subnet = appnet.and_then(|n| n["subnet"].as_str()).context("appnet subnet")?;
    assert_eq!(subnet, "172.18.0.0/16", "the first of Docker's user pools: {nets}");
    l.run_detached(
        "n",
        "server",
        &["--network", "appnet", "bb", "sh", "-c", &httpd("hello-by-name")],
    )?;
    let server_ip = l.ps("n", "server")?["ip"].as_str().context("server ip")?.to_owned();
    assert!(server_ip.starts_with("172.18."), "{server_ip}");
    let inspect = l.json(&["network", "inspect", "--vm", "n", "appnet"])?;
    assert_eq!(inspect["containers"]["server"], server_ip.as_str(), "{inspect}");
    let held =
        |v: &Value| v["ipam"].as_array().is_some_and(|a| a.iter().any(|x| x == server_ip.as_str()));
    assert!(held(&inspect), "host-local's store must hold {server_ip}: {inspect}");
    // The client retries while the server's httpd starts; by name, through /etc/hosts.
    let out = until(Duration::from_secs(120), Duration::from_millis(500), || {
        let out = l.run(
            &[
                "run",
                "--vm",
                "n",
                "--rm",
                "--network",
                "appnet",
                "bb",
                "wget",
                "-q",
                "-O",
                "-",
                "http://server/",
            ],
            None,
        )?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(if out.status.success() {
            ControlFlow::Break(text)
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            ControlFlow::Continue(format!("wget http://server/ kept failing: {text}{err}"))
        })
    })?;
    assert_eq!(out, "hello-by-name\n");
    let hosts = l.ok(&["exec", "--vm", "n", "server", "cat", "/etc/hosts"])?;
    assert!(hosts.contains(&format!("{server_ip}\tserver")), "{hosts}");
    assert_eq!(l.ok(&["exec", "--vm", "n", "server", "hostname"])?, "server\n");

    // In use: refused, naming the container; after rm, the address is free and it goes.
    let e = l.fails(&["network", "rm", "--vm", "n", "appnet"])?;
    assert!(e.contains("has active endpoints (server)"), "{e}");
    l.ok(&["rm", "--vm", "n", "-f", "server"])?;
    let inspect = l.json(&["network", "inspect", "--vm", "n", "appnet"])?;
    assert!(!held(&inspect), "rm must release {server_ip} (CNI DEL): {inspect}");
    assert_eq!(inspect["containers"], serde_json::json!({}), "{inspect}");
    l.ok(&["network", "rm", "--vm", "n", "appnet"])?;
    let nets = l.json(&["network", "ls", "--vm", "n", "--json"])?;
    assert!(!nets.to_string().contains("appnet"), "{nets}");

    // The default network's address goes with its container too.
    l.ok(&["rm", "--vm", "n", "-f", "web"])?;
    let inspect = l.json(&["network", "inspect", "--vm", "n", "bridge"])?;
    assert_eq!(inspect["ipam"], serde_json::json!([]), "{inspect}");
    ensure!(http_get(web_port).map_or(true, |r| !r.contains("hello-from-web")), "web still served");
    l.ok(&["vm", "stop", "n"])?;
    Ok(())
}
