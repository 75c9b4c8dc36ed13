//! The pool's thin volumes over the data channel: `lamina volume send` and `lamina volume
//! receive` between appliances through the host.
//!
//! The stream is thinpool's send stream ([`thinpool::delta::stream`]), made and applied by the
//! pool daemon that owns the pool, through its control socket and a FIFO
//! ([`thinpool::daemon::transfer`]); here the bytes only pass between that FIFO and the port
//! as frames ([`super::data`]), never staged on the store or held whole in memory. A receive
//! that is cut (the host went away, or the stream itself is short) or corrupt is refused by
//! the daemon, which drops its temporary volume: the pool keeps no half volume.

use std::io::{Read, Write};

use serde_json::json;

use super::data::{self, DataError, FrameReader, FrameWriter};
use super::write;

/// `volume.send`: `{"ready":true}`, the stream as frames, then the result line.
pub fn send<S: Read + Write>(s: &mut S, name: &str, from: Option<&str>) -> Result<(), DataError> {
    let client = crate::pool::control_client();
    if !client.socket_exists() {
        return write(s, &data::reply_line(&Err("the pool is not up")));
    }
    write(s, "{\"ready\":true}\n")?;
    let mut frames = FrameWriter::new(s);
    let r = client.send_to(name, from, &mut frames);
    // The end frame also after a refusal: the host reads frames until it, then the result.
    frames.finish().map_err(|source| match r.is_ok() {
        true => DataError::Io { what: "send", source },
        false => DataError::HostGone("during a volume send"),
    })?;
    let reply = r
        .map(|st| {
            tracing::info!("volume send {name}: {} stream bytes", st.stream_bytes);
            json!({"sent": name, "stream_bytes": st.stream_bytes, "data_bytes": st.data_bytes,
                   "records": st.records})
        })
        .map_err(|e| {
            crate::say(&format!("volume send {name} failed: {}", units::chain(&e)));
            units::chain(&e)
        });
    write(s, &data::reply_line(&reply))
}

/// `volume.receive`: `{"ready":true}`, the host's frames into the daemon, the result line.
/// A refusal is answered at once (the host stops sending) and the frames still on their way
/// are dropped.
pub fn receive<S: Read + Write>(
    s: &mut S,
    name: &str,
    base: Option<&str>,
) -> Result<(), DataError> {
    let client = crate::pool::control_client();
    if !client.socket_exists() {
        return write(s, &data::reply_line(&Err("the pool is not up")));
    }
    write(s, "{\"ready\":true}\n")?;
    let mut frames = FrameReader::new(s);
    // A volume the host sends in is the host's: offered over NBD like the ones it creates
    // (the daemon serves `--exports flagged`). Marked after the receive's own commit, so a
    // crash in between leaves it unoffered, never the other way round.
    let r = client.receive_from(name, base, &mut frames).and_then(|st| {
        client.set_export(name, true).map_err(thinpool::daemon::transfer::TransferError::from)?;
        Ok(st)
    });
    let reply = r
        .map(|st| {
            tracing::info!("volume receive {name}: {} stream bytes", st.stream_bytes);
            json!({"received": name, "stream_bytes": st.stream_bytes,
                   "data_bytes": st.data_bytes, "records": st.records})
        })
        .map_err(|e| {
            let e = units::chain(&e);
            crate::say(&format!("volume receive {name} refused, nothing received: {e}"));
            e
        });
    let ended = frames.ended();
    write(frames.get_mut(), &data::reply_line(&reply))?;
    if !ended {
        frames.drain()?;
    }
    Ok(())
}
