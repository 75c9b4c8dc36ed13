//! `cargo xtask bench [SUITE..]`: runs the benchmarks, each of which writes JSON-lines
//! [`record::Record`]s, then writes under `target/bench/`: `SUITE.jsonl` (raw), `results.json`
//! (comparisons), `results.md` (the table, with the machine and date) and SVG plots.
//!
//! Every suite compares lamina with its peers in one interleaved run; the ratios are computed
//! here from the medians, never typed in.

mod boot;
mod guest;
mod plot;
pub mod record;
pub mod report;
mod xfs;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// NBD throughput: lamina vs nbdkit (file) and qemu-nbd (raw, qcow2), plus the CoW case.
    Nbd,
    /// Pool scaling: snapshot, lookup, allocation and commit from 10^3 to 10^6 mapped blocks.
    Thinpool,
    /// Layer store: import vs umoci, container create overlay vs vfs.
    Layers,
    /// Appliance first and second boot to READY.
    Boot,
    /// In one VM: the lamina volume through /dev/nbd0 vs kernel dm-thin vs the raw disk.
    Guest,
    /// Every suite above.
    All,
}

impl Suite {
    fn name(self) -> &'static str {
        match self {
            Suite::Nbd => "nbd",
            Suite::Thinpool => "thinpool",
            Suite::Layers => "layers",
            Suite::Boot => "boot",
            Suite::Guest => "guest",
            Suite::All => "all",
        }
    }

    /// The cargo bench target that produces this suite's records.
    fn cargo_bench(self) -> Option<(&'static str, &'static str)> {
        match self {
            Suite::Nbd => Some(("thinpool", "nbd")),
            Suite::Thinpool => Some(("thinpool", "pool")),
            Suite::Layers => Some(("overlay", "layers")),
            Suite::Boot | Suite::Guest | Suite::All => None,
        }
    }
}

pub fn run(root: &Path, suites: &[Suite]) -> Result<()> {
    let mut chosen: Vec<Suite> = if suites.is_empty() || suites.contains(&Suite::All) {
        vec![Suite::Nbd, Suite::Thinpool, Suite::Layers, Suite::Boot, Suite::Guest]
    } else {
        suites.to_vec()
    };
    chosen.dedup();
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut failed = Vec::new();
    let mut times = Vec::new();
    let t_all = std::time::Instant::now();
    for suite in &chosen {
        eprintln!("bench: running {}", suite.name());
        let jsonl = out.join(format!("{}.jsonl", suite.name()));
        let _ = std::fs::remove_file(&jsonl);
        let t = std::time::Instant::now();
        if let Err(e) = run_suite(root, *suite, &jsonl) {
            eprintln!("bench: {} failed: {e:#}", suite.name());
            failed.push(suite.name());
        }
        times.push(format!("{} {}", suite.name(), mm_ss(t.elapsed().as_secs())));
        eprintln!("bench: {} took {}", suite.name(), mm_ss(t.elapsed().as_secs()));
    }
    // Wall time per suite, builds included (cargo bench compiles before it measures).
    let line = format!("{}; total {}", times.join(", "), mm_ss(t_all.elapsed().as_secs()));
    eprintln!("bench: suite times: {line}");
    std::fs::write(out.join("times.txt"), format!("{line}\n"))?;
    summarize(&out)?;
    if !failed.is_empty() {
        bail!("bench suites failed: {}", failed.join(", "));
    }
    Ok(())
}

fn run_suite(root: &Path, suite: Suite, jsonl: &Path) -> Result<()> {
    match suite {
        Suite::Boot => return boot::run(root, jsonl),
        Suite::Guest => return guest::run(root, jsonl),
        _ => {}
    }
    let Some((package, bench)) = suite.cargo_bench() else {
        bail!("the {} suite is not built yet", suite.name());
    };
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["bench", "-p", package, "--bench", bench]).env("BENCH_OUT", jsonl).current_dir(root);
    // The layer store runs on XFS in the appliance: measure there unless BENCH_DIR says
    // otherwise. Dropped (unmounted, deleted) when this function returns, also on error.
    let mut _scratch = None;
    if suite == Suite::Layers && std::env::var_os("BENCH_DIR").is_none() {
        let dir = root.join("target/bench");
        let x = xfs::ScratchXfs::create(&dir, "layers-xfs", 4 << 30)?;
        eprintln!("bench: layers on a scratch XFS at {}", x.path().display());
        cmd.env("BENCH_DIR", x.path());
        _scratch = Some(x);
    }
    // The btrfs driver needs btrfs (and the devicemapper stand-in's reflinked volumes use it).
    let mut _scratch_btrfs = None;
    if suite == Suite::Layers && std::env::var_os("BENCH_BTRFS_DIR").is_none() {
        let dir = root.join("target/bench");
        let b = xfs::ScratchXfs::create_with(
            &dir,
            "layers-btrfs",
            8 << 30,
            &["mkfs.btrfs", "-q", "-f"],
        )?;
        eprintln!("bench: btrfs driver on a scratch btrfs at {}", b.path().display());
        cmd.env("BENCH_BTRFS_DIR", b.path());
        _scratch_btrfs = Some(b);
    }
    let status = cmd.status().context("running cargo bench")?;
    if !status.success() {
        bail!("cargo bench -p {package} --bench {bench} failed ({status})");
    }
    if !jsonl.exists() {
        bail!("cargo bench -p {package} --bench {bench} wrote no records to {}", jsonl.display());
    }
    Ok(())
}

fn mm_ss(secs: u64) -> String {
    format!("{}m{:02}s", secs / 60, secs % 60)
}

/// Reads every `*.jsonl` under `out` and writes the comparisons, the table and the plots.
pub fn summarize(out: &Path) -> Result<()> {
    let mut records = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(out)
        .with_context(|| format!("no benchmark records in {}: run a bench first", out.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    for f in &files {
        records.extend(record::load(f)?);
    }
    if records.is_empty() {
        bail!("no benchmark records in {}: run a bench first", out.display());
    }
    let rows = report::compare(&records);
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&rows)?)?;
    let header = format!("Measured on {}, {}.", machine(), today());
    let md = report::markdown(&rows, &header);
    std::fs::write(out.join("results.md"), &md)?;
    let mut suites: Vec<&str> = rows.iter().map(|r| r.suite.as_str()).collect();
    suites.dedup();
    for suite in suites {
        let of_suite: Vec<&report::Comparison> = rows.iter().filter(|r| r.suite == suite).collect();
        plot::suite_bars(out, suite, &of_suite)?;
    }
    plot::scaling_lines(out, &records)?;
    println!("{md}");
    eprintln!("bench: results in {}", out.display());
    Ok(())
}

/// "2 × AMD EPYC …, 24 GiB" from /proc.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':'])))
        .unwrap_or("unknown CPU")
        .to_string();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    format!("{cpus} × {model}, {:.0} GiB", mem_kib as f64 / 1024.0 / 1024.0)
}

fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarize_writes_table_json_and_plots() {
        let dir = tempfile::tempdir().unwrap();
        let line = |case: &str, subject: &str, value: f64, x: &str| {
            format!(
                r#"{{"suite":"nbd","case":"{case}","subject":"{subject}","metric":"throughput","value":{value},"unit":"IOPS","better":"higher"{x}}}"#
            )
        };
        let text = [
            line("4k randread", "lamina", 500.0, ""),
            line("4k randread", "nbdkit file", 400.0, ""),
            line("4k randread", "qemu-nbd raw", 250.0, ""),
            line("scale", "lamina", 7.0, r#","x":1000"#),
            line("scale", "lamina", 8.0, r#","x":1000000"#),
        ]
        .join("\n");
        std::fs::write(dir.path().join("nbd.jsonl"), text).unwrap();
        summarize(dir.path()).unwrap();
        let md = std::fs::read_to_string(dir.path().join("results.md")).unwrap();
        assert!(md.contains("1.25x (nbdkit file)"), "{md}");
        let svg = std::fs::read_to_string(dir.path().join("nbd.svg")).unwrap();
        assert!(svg.contains("lamina") && svg.contains("4k randread"), "bars are labelled");
        assert!(dir.path().join("nbd-throughput.svg").exists(), "scaling series drawn");
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("results.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(json.as_array().unwrap().len(), 1);
    }
}
