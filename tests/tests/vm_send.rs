//! VM tier: `lamina volume send/receive` between two appliances through the host, only
//! through the `lamina` binary and in production boots (no lamina.debug). One VM at a time:
//! appliance A boots once on its disk, then appliance B once on another.
//!
//! A: a 64 MiB thin volume is written over NBD from the host (nbdsh) in six rounds (16 MiB,
//! then overwrites, new ranges, a discard, an unaligned write); after each round
//! `lamina volume snapshot` takes s0..s5 and each snapshot read back over NBD (nbdcopy)
//! must equal the host's model of the volume. `volume send` writes s0 whole and s1..s5 each
//! `--from` the one before into host files: an incremental's size follows the changed data
//! (at most the changed blocks plus a few KiB), not the volume.
//!
//! B: the streams are received in order and every snapshot read back over NBD has the
//! sha256 A's had. Refused, each with its reason and the pool's volume list and used space
//! unchanged (no half volume): an incremental before its base, a stream cut on the host, a
//! stream with one flipped byte, a receive whose host process is killed half-way, and a
//! name that exists. Debian's thin_check passes on B's metadata afterwards.

use std::ops::ControlFlow;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tests::cli::Lamina;
use tests::dmthin::sha256_hex;
use tests::host_run;
use tests::wait::until;

const SIZE: usize = 64 << 20;
const MIB: usize = 1 << 20;

/// One round of changes to the volume.
enum Change {
    Write { offset: usize, len: usize, seed: u64 },
    Discard { offset: usize, len: usize },
}

/// The rounds: s0 after the first, s1..s5 after each of the others.
fn rounds() -> Vec<Vec<Change>> {
    use Change::*;
    vec![
        vec![Write { offset: 0, len: 16 * MIB, seed: 1 }],
        vec![Write { offset: 2 * MIB, len: MIB, seed: 2 }],
        vec![Write { offset: 40 * MIB, len: MIB, seed: 3 }],
        vec![
            Discard { offset: 8 * MIB, len: 2 * MIB },
            Write { offset: 60 * MIB, len: MIB / 2, seed: 4 },
        ],
        vec![Write { offset: 5 * MIB + 12345, len: 100 << 10, seed: 5 }],
        vec![
            Write { offset: 20 * MIB, len: 3 * MIB, seed: 6 },
            Write { offset: 0, len: 4096, seed: 7 },
        ],
    ]
}

/// Deterministic bytes, not repeating at block granularity.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut v = vec![0u8; len.next_multiple_of(8)];
    for c in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// libnbd's Python shell on `url` running `code`, under Debian's python (which has the nbd
/// module; a python3 earlier in PATH may not).
fn nbdsh(url: &str, code: &str) -> Command {
    let mut c = Command::new("/usr/bin/python3");
    // nbdsh is a shell wrapper around `python3 -m nbd`.
    c.args(["-m", "nbd", "-u", url, "-c", code]);
    c
}

/// Applies a round to the export over NBD (nbdsh, libnbd's Python shell) and to the model.
fn apply(url: &str, model: &mut [u8], round: &[Change], dir: &Path) -> Result<()> {
    for c in round {
        match *c {
            Change::Write { offset, len, seed } => {
                let data = pattern(len, seed);
                let f = dir.join("chunk");
                std::fs::write(&f, &data)?;
                let code = format!(
                    "d = open({:?}, 'rb').read()\n\
                     for i in range(0, len(d), 4 << 20):\n    h.pwrite(d[i:i + (4 << 20)], {offset} + i)\n\
                     h.flush()",
                    f.display().to_string()
                );
                host_run(&mut nbdsh(url, &code))
                    .context("nbdsh (Debian packages python3-libnbd, libnbd-bin)")?;
                model[offset..offset + len].copy_from_slice(&data);
            }
            Change::Discard { offset, len } => {
                let code = format!("h.trim({len}, {offset})\nh.flush()");
                host_run(&mut nbdsh(url, &code))?;
                model[offset..offset + len].fill(0);
            }
        }
    }
    Ok(())
}

/// Bytes of whole pool blocks a round touches (what an incremental must carry at most).
fn changed_blocks(round: &[Change], block: usize) -> usize {
    let mut blocks = std::collections::BTreeSet::new();
    for c in round {
        let (offset, len) = match *c {
            Change::Write { offset, len, .. } => (offset, len),
            // A discard travels as one zero record, not as data.
            Change::Discard { .. } => continue,
        };
        blocks.extend(offset / block..(offset + len).div_ceil(block));
    }
    blocks.len() * block
}

/// The sha256 of an export, read whole over NBD with nbdcopy.
fn export_sha256(port: u16, name: &str) -> Result<String> {
    let out = Command::new("nbdcopy")
        .args([&format!("nbd://127.0.0.1:{port}/{name}"), "-"])
        .output()
        .context("nbdcopy (Debian package libnbd-bin)")?;
    ensure!(out.status.success(), "nbdcopy {name}: {}", String::from_utf8_lossy(&out.stderr));
    ensure!(out.stdout.len() == SIZE, "{name}: read {} bytes", out.stdout.len());
    Ok(sha256_hex(&out.stdout))
}

/// The pool's volume names (`volume ls --pool --json`), sorted.
fn pool_volumes(l: &Lamina, vm: &str) -> Result<Vec<String>> {
    let v = l.json(&["volume", "ls", "--pool", "--vm", vm, "--json"])?;
    let mut names: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// The pool's used data bytes.
fn data_used(l: &Lamina, vm: &str) -> Result<u64> {
    let st = l.json(&["vm", "ctl", vm, "status"])?;
    st["pool"]["pool"]["data"]["used"].as_u64().with_context(|| format!("no data.used in {st}"))
}

/// The pool as a refused receive must leave it: the same volumes, and (once blocks freed
/// since the last commit are free again, within 15 s) no more data blocks used.
fn unchanged(l: &Lamina, vm: &str, names: &[String], used: u64, what: &str) -> Result<()> {
    assert_eq!(pool_volumes(l, vm)?, names, "{what} changed the volume list");
    until(Duration::from_secs(15), Duration::from_millis(500), || {
        let now = data_used(l, vm)?;
        Ok(match now.checked_sub(used) {
            None | Some(0) => ControlFlow::Break(()),
            Some(kept) => ControlFlow::Continue(format!("{what} keeps {kept} bytes of the pool")),
        })
    })
}

/// A receive that must be refused naming `why`, leaving the pool as it was.
fn refused(l: &Lamina, vm: &str, args: &[&str], stdin: &Path, why: &str) -> Result<String> {
    let (names, used) = (pool_volumes(l, vm)?, data_used(l, vm)?);
    let mut argv = vec!["volume", "receive", "--vm", vm];
    argv.extend(args);
    let out = l.run(&argv, Some(stdin))?;
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(!out.status.success(), "{args:?} was accepted");
    ensure!(e.contains(why), "{args:?}: expected {why:?} in {e}");
    unchanged(l, vm, &names, used, &format!("a refused receive ({why})"))?;
    Ok(e)
}

#[test]
fn vm_send_receive_between_appliances() -> Result<()> {
    let l = Lamina::new("vm_send", Duration::from_secs(1500))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let port_s = port.to_string();
    let streams = l.home.join("streams");
    std::fs::create_dir_all(&streams)?;
    let boot = |vm: &str, disk: &Path| -> Result<()> {
        let disk = format!("{},size=2G", disk.display());
        l.ok(&["vm", "run", "--name", vm, "--detach", "--nbd-port", &port_s, "--disk", &disk])?;
        let st = l.json(&["vm", "ctl", vm, "status"])?;
        assert_eq!(st["debug"], false, "production boot expected: {st}");
        Ok(())
    };
    let stream = |i: usize| streams.join(format!("s{i}.stream"));
    let rounds = rounds();

    // Appliance A: the volume, its snapshots and their streams.
    boot("a", &l.home.join("a.raw"))?;
    l.json(&["vm", "ctl", "a", "volume.create", &format!(r#"{{"name":"vol","size":{SIZE}}}"#)])?;
    let st = l.json(&["vm", "ctl", "a", "pool.status"])?;
    let block = st["block_bytes"].as_u64().with_context(|| format!("{st}"))? as usize;
    let mut model = vec![0u8; SIZE];
    let mut digests = Vec::new();
    let url = format!("nbd://127.0.0.1:{port}/vol");
    for (i, round) in rounds.iter().enumerate() {
        apply(&url, &mut model, round, &l.home)?;
        let snap = format!("s{i}");
        assert_eq!(l.ok(&["volume", "snapshot", "--vm", "a", "vol", &snap])?.trim(), snap);
        let want = sha256_hex(&model);
        assert_eq!(export_sha256(port, &snap)?, want, "{snap} on A differs from the model");
        digests.push(want);
        let out = stream(i).display().to_string();
        let prev = format!("s{}", i.wrapping_sub(1));
        let mut argv = vec!["volume", "send", "--vm", "a", &snap, "-o", &out];
        if i > 0 {
            argv.extend(["--from", &prev]);
        }
        l.ok(&argv)?;
        let len = std::fs::metadata(stream(i))?.len() as usize;
        let written: usize = round
            .iter()
            .map(|c| match *c {
                Change::Write { len, .. } => len,
                Change::Discard { .. } => 0,
            })
            .sum();
        eprintln!(
            "[vm_send] s{i}: stream {len} bytes for {written} bytes written \
             ({} changed blocks' bytes)",
            changed_blocks(round, block)
        );
        assert!(len >= written, "s{i}: a {len}-byte stream cannot carry {written} bytes");
        assert!(
            len <= changed_blocks(round, block) + 8192,
            "s{i}: the stream ({len} bytes) is more than the changed blocks"
        );
        if i > 0 {
            assert!(
                len < SIZE / 16,
                "s{i}: an incremental of {len} bytes for a {SIZE}-byte volume"
            );
        }
    }
    // Errors name what is wrong and exit non-zero; a stream is never written to a terminal
    // (stdout here is a pipe, so that case is not reached).
    let e = l.fails(&["volume", "send", "--vm", "a", "ghost", "-o", "/dev/null"])?;
    assert!(e.contains("ghost"), "{e}");
    let nothing = l.home.join("nothing.stream");
    let e = l.fails(&[
        "volume",
        "send",
        "--vm",
        "a",
        "s1",
        "--from",
        "ghost",
        "-o",
        &nothing.display().to_string(),
    ])?;
    assert!(e.contains("ghost"), "{e}");
    assert!(!nothing.exists(), "a failed send leaves its output behind");
    let e = l.fails(&["volume", "snapshot", "--vm", "a", "ghost", "g2"])?;
    assert!(e.contains("ghost"), "{e}");
    let help = l.ok(&["volume", "send", "-h"])?;
    assert!(help.contains("--from") && help.contains("--vm"), "{help}");
    l.ok(&["vm", "stop", "a"])?;

    // Appliance B: the chain, after the refusals.
    let b_disk = l.home.join("b.raw");
    boot("b", &b_disk)?;
    assert_eq!(pool_volumes(&l, "b")?, ["store"]);
    let e = refused(&l, "b", &["s1"], &stream(1), "s0")?;
    eprintln!("[vm_send] incremental before its base: {e}");
    // A host process killed half-way through a receive.
    let full = std::fs::read(stream(0))?;
    let (names, used) = (pool_volumes(&l, "b")?, data_used(&l, "b")?);
    // Megabytes reach the guest before the client dies.
    let receive = ["volume", "receive", "--vm", "b", "-q", "killed"];
    l.killed_mid_stream("b", &receive, &full, "volume receive killed refused")?;
    unchanged(&l, "b", &names, used, "an interrupted receive")?;

    l.ok(&["volume", "receive", "--vm", "b", "s0", "-i", &stream(0).display().to_string()])?;
    // A stream cut on the host, and one with a flipped byte, are refused.
    let s1 = std::fs::read(stream(1))?;
    let cut = streams.join("s1.cut");
    std::fs::write(&cut, &s1[..s1.len() * 2 / 3])?;
    let e = refused(&l, "b", &["s1"], &cut, "ends early")?;
    eprintln!("[vm_send] cut stream: {e}");
    let mut flipped = s1.clone();
    flipped[s1.len() / 2] ^= 0x10;
    let flip = streams.join("s1.flipped");
    std::fs::write(&flip, &flipped)?;
    let e = refused(&l, "b", &["s1"], &flip, "checksum")?;
    eprintln!("[vm_send] flipped stream: {e}");
    for i in 1..rounds.len() {
        let out = l.ok(&[
            "volume",
            "receive",
            "--vm",
            "b",
            &format!("s{i}"),
            "-i",
            &stream(i).display().to_string(),
        ])?;
        assert_eq!(out.trim(), format!("s{i}"));
    }
    let e = refused(&l, "b", &["s0"], &stream(0), "already exists")?;
    eprintln!("[vm_send] existing name: {e}");
    let mut want: Vec<String> = (0..rounds.len()).map(|i| format!("s{i}")).collect();
    want.push("store".into());
    assert_eq!(pool_volumes(&l, "b")?, want);
    for (i, d) in digests.iter().enumerate() {
        assert_eq!(&export_sha256(port, &format!("s{i}"))?, d, "s{i} on B differs from A's");
    }
    let table = l.ok(&["volume", "ls", "--pool", "--vm", "b"])?;
    assert!(table.starts_with("VOLUME NAME") && table.contains("s5"), "{table}");
    l.ok(&["vm", "stop", "b"])?;
    let report = tests::check_pool_disk(&b_disk)?;
    eprintln!("[vm_send] B's metadata: {report}");
    Ok(())
}
