//! The handshake state machine as a client meets it: fuzz bytes are everything a unix-socket
//! client sends (client flags, options, then possibly a TLS ClientHello after STARTTLS and
//! transmission requests) to a server with TLS on (first byte even) or required (odd), over
//! a 1 MiB memory export. The server must answer, refuse or disconnect: never panic or hang.
#![no_main]

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use thinpool::export::mem::{MemCatalog, MemExport};
use thinpool::nbd::server::tls::{self, Tls, TlsMode};
use thinpool::nbd::{Server, ServerOptions};

mod peer;

fn server(mode: TlsMode) -> Arc<Server> {
    let cat = Arc::new(MemCatalog::new());
    cat.insert("vol", "fuzz", Arc::new(MemExport::new(1 << 20)));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tls");
    let config = tls::load(&dir, false).expect("fuzz/tls certificates");
    let opts = ServerOptions { tls: Some(Tls { mode, config }), ..ServerOptions::default() };
    Server::new(cat, opts)
}

static ON: OnceLock<Arc<Server>> = OnceLock::new();
static REQUIRE: OnceLock<Arc<Server>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&pick, input)) = data.split_first() else { return };
    let srv = if pick & 1 == 0 {
        ON.get_or_init(|| server(TlsMode::On))
    } else {
        REQUIRE.get_or_init(|| server(TlsMode::Require))
    };
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let conn = srv.serve_unix(theirs);
    let drain = peer::send_all(&ours, input);
    // The server closes its end when it is done with the client.
    drain.join().expect("drain thread panicked");
    // Joined, not only counted out of the server: LeakSanitizer checks after each input, and
    // memory a connection thread frees on its way out would otherwise look leaked (long runs
    // stopped on exactly that, with a one-byte input, while the harness waited for the
    // connection count only).
    if let Some(t) = conn {
        t.join().expect("connection thread panicked");
    }
});
