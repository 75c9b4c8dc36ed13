//! Handshake admission: one total deadline for the handshake (a client trickling bytes is
//! dropped on time), the handshake's timeouts gone once transmission starts, slow handshakes
//! cannot keep a good client out, and the per-address cap.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::client::*;
use support::nbd::*;
use support::wait_for;
use thinpool::export::mem::{MemCatalog, MemExport};
use thinpool::nbd::proto::opt::*;
use thinpool::nbd::proto::wire::*;
use thinpool::nbd::ServerOptions;

const MIB: u64 = 1 << 20;

fn catalog() -> Arc<MemCatalog> {
    let cat = Arc::new(MemCatalog::new());
    cat.insert("vol", "", Arc::new(MemExport::new(64 * MIB)));
    cat
}

/// A client that reads the greeting and then sends its handshake one byte per `pace`, for as
/// long as the server keeps it. Returns when the server closes the connection, with the time
/// it lasted.
fn trickle(addr: SocketAddr, pace: Duration) -> Duration {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut g = [0u8; GREETING_LEN];
    s.read_exact(&mut g).expect("greeting");
    let mut reader = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        // Client flags, then an option header that never ends.
        let mut bytes = (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes().to_vec();
        bytes.extend_from_slice(&IHAVEOPT.to_be_bytes());
        for b in bytes.iter().cycle() {
            if s.write_all(&[*b]).is_err() {
                return;
            }
            // The client's pace, not synchronisation: this is the abuse under test.
            std::thread::sleep(pace);
        }
    });
    reader.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut b = [0u8; 1];
    let end = match reader.read(&mut b) {
        Ok(0) => t0.elapsed(),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => t0.elapsed(),
        other => panic!("the server sent data or the read timed out: {other:?}"),
    };
    let _ = reader.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    end
}

fn serve_some(c: &mut Client, seed: u64) {
    let data = random_bytes(65536, seed);
    assert_eq!(c.write(seed * 65536, &data, 0), 0);
    assert_eq!(c.read(seed * 65536, 65536).unwrap(), data);
}

#[test]
fn trickling_handshake_is_dropped_at_the_deadline_while_a_good_client_is_served() {
    let srv = start(catalog(), ServerOptions::default());
    assert_eq!(ServerOptions::default().handshake_timeout, Duration::from_secs(10));
    let addr = srv.addr;
    let slow = std::thread::spawn(move || trickle(addr, Duration::from_secs(2)));
    // A good client comes and goes while the slow one trickles.
    wait_for("the slow client to connect", Duration::from_secs(10), || {
        srv.server.connections() == 1
    });
    let t0 = Instant::now();
    let mut c = Client::connect(srv.addr, "vol", true, false);
    serve_some(&mut c, 1);
    c.disconnect();
    assert!(t0.elapsed() < Duration::from_secs(3), "the good client was served at once");
    let lasted = slow.join().unwrap();
    // Per-read re-arming would keep it forever (a byte every 2 s < 10 s per read).
    assert!(
        lasted >= Duration::from_millis(9500) && lasted < Duration::from_secs(13),
        "a trickling handshake must end at the 10 s deadline, lasted {lasted:?}"
    );
}

#[test]
fn max_connections_slow_handshakes_do_not_lock_a_good_client_out() {
    let opts = ServerOptions { max_connections: 4, ..ServerOptions::default() };
    let srv = start(catalog(), opts);
    let addr = srv.addr;
    let slow: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || trickle(addr, Duration::from_millis(1500))))
        .collect();
    wait_for("four slow handshakes", Duration::from_secs(10), || srv.server.connections() == 4);
    // The server is full of handshakes; a good client still gets in and is served, and an
    // established client is never the one evicted.
    let t0 = Instant::now();
    let mut a = Client::connect(srv.addr, "vol", false, false);
    serve_some(&mut a, 2);
    let mut b = Client::connect(srv.addr, "vol", true, false);
    serve_some(&mut b, 3);
    assert!(t0.elapsed() < Duration::from_secs(4), "good clients waited {:?}", t0.elapsed());
    // Two slow ones made room (evicted long before their deadline).
    let mut lasted: Vec<Duration> = slow.into_iter().map(|t| t.join().unwrap()).collect();
    lasted.sort();
    assert!(lasted[1] < Duration::from_secs(8), "two handshakes were evicted: {lasted:?}");
    // The established clients were left alone throughout.
    serve_some(&mut a, 4);
    serve_some(&mut b, 5);
    // Full of clients in transmission: a newcomer is refused, nobody is evicted.
    let _c = Client::connect(srv.addr, "vol", false, false);
    let _d = Client::connect(srv.addr, "vol", false, false);
    wait_for("four clients", Duration::from_secs(5), || srv.server.connections() == 4);
    let mut e = TcpStream::connect(srv.addr).unwrap();
    e.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(closed(&mut e), "a fifth connection is refused when all four are served");
    serve_some(&mut a, 6);
    a.disconnect();
    b.disconnect();
}

#[test]
fn per_address_cap_refuses_the_extra_connection() {
    let opts = ServerOptions { max_per_address: 2, ..ServerOptions::default() };
    let srv = start(catalog(), opts);
    let mut a = Client::connect(srv.addr, "vol", false, false);
    let _b = hello(srv.addr);
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(closed(&mut s), "a third connection from 127.0.0.1 is closed without a greeting");
    // Unix-socket clients have no address and are not counted.
    let mut u = Client::connect_unix(&srv.sock, "vol", false, false);
    serve_some(&mut u, 1);
    serve_some(&mut a, 2);
    a.disconnect();
    // A slot freed is a slot usable again.
    wait_for("the slot to free", Duration::from_secs(5), || srv.server.connections() == 2);
    let mut c = Client::connect(srv.addr, "vol", false, false);
    serve_some(&mut c, 3);
}

#[test]
fn a_client_that_stops_reading_replies_is_not_cut_off() {
    let opts =
        ServerOptions { handshake_timeout: Duration::from_secs(1), ..ServerOptions::default() };
    let srv = start(catalog(), opts);
    let mut c = Client::connect(srv.addr, "vol", false, false);
    let want = random_bytes(MIB as usize, 9);
    assert_eq!(c.write(0, &want, 0), 0);
    // 48 MiB of READ replies: far more than the socket buffers hold, so the server blocks
    // writing them while the client does not read, for longer than the handshake deadline.
    let n = 48;
    let cookies: Vec<u64> = (0..n).map(|_| c.send(CMD_READ, 0, 0, MIB, &[])).collect();
    let t0 = Instant::now();
    // The pause is the behaviour under test (a client busy elsewhere), not synchronisation.
    std::thread::sleep(Duration::from_secs(3));
    for _ in 0..n {
        let r = c.recv(|ck| cookies.contains(&ck).then_some(MIB as usize));
        assert_eq!(r.error, 0);
        assert!(r.data == want, "reply data intact");
    }
    assert!(t0.elapsed() >= Duration::from_secs(3));
    serve_some(&mut c, 7);
    c.disconnect();
}
