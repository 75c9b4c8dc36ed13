//! `cargo xtask fuzz`: every cargo-fuzz target in fuzz/, one after another, each for
//! `--time` seconds, on its corpus kept in the repository (fuzz/corpus/TARGET, minimised with
//! `cargo fuzz cmin` after the run so it stays small). Prints the executions per target and
//! the total; any crash fails the task and leaves its input in fuzz/artifacts/TARGET.
//!
//! cargo-fuzz passes `-Zsanitizer=address`, so the targets build with a nightly toolchain
//! (`rustup run nightly`); cargo-fuzz itself comes from crates.io when missing.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// One target's run.
pub struct Run {
    pub target: String,
    pub execs: u64,
    pub seconds: u64,
}

pub fn task_fuzz(root: &Path, time: u64, only: &[String], cmin: bool) -> Result<()> {
    ensure_tools()?;
    let dir = root.join("fuzz");
    let targets = list_targets(&dir)?;
    let chosen: Vec<String> = if only.is_empty() {
        targets
    } else {
        for t in only {
            if !targets.contains(t) {
                bail!("no fuzz target {t:?} (targets: {})", targets.join(", "));
            }
        }
        only.to_vec()
    };
    let mut runs = Vec::new();
    for t in &chosen {
        eprintln!("== fuzz {t} for {time} s");
        let run = run_target(&dir, t, time)?;
        // Said at once, so a long run that is cut short still reports what it did.
        eprintln!("== fuzz {t}: {} executions in {time} s, no crash", run.execs);
        runs.push(run);
        if cmin {
            minimise(&dir, t)?;
        }
    }
    let total: u64 = runs.iter().map(|r| r.execs).sum();
    println!("| target | seconds | executions |");
    println!("|---|---|---|");
    for r in &runs {
        println!("| {} | {} | {} |", r.target, r.seconds, r.execs);
    }
    println!("| total | {} | {total} |", runs.iter().map(|r| r.seconds).sum::<u64>());
    Ok(())
}

fn nightly_cargo(dir: &Path) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo"]).current_dir(dir);
    c
}

fn ensure_tools() -> Result<()> {
    install_unless(
        Command::new("rustup").args(["run", "nightly", "rustc", "--version"]),
        Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]),
        "cargo fuzz needs a nightly toolchain and `rustup toolchain install nightly`",
    )?;
    install_unless(
        Command::new("cargo").args(["fuzz", "--version"]),
        Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]),
        "cargo install cargo-fuzz",
    )
}

/// Runs `install` unless `probe` (output discarded) succeeds; `what` names the install in
/// its error.
fn install_unless(probe: &mut Command, install: &mut Command, what: &str) -> Result<()> {
    let present =
        probe.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !present {
        let st = install.status().with_context(|| format!("running {install:?}"))?;
        if !st.success() {
            bail!("{what} failed");
        }
    }
    Ok(())
}

fn list_targets(dir: &Path) -> Result<Vec<String>> {
    let out = nightly_cargo(dir).args(["fuzz", "list"]).output().context("cargo fuzz list")?;
    if !out.status.success() {
        bail!("cargo fuzz list failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect())
}

fn run_target(dir: &Path, target: &str, time: u64) -> Result<Run> {
    let corpus = dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let out = nightly_cargo(dir)
        .args(["fuzz", "run", "-O", target])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={time}"))
        .args(["-print_final_stats=1", "-max_len=4096"])
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cargo fuzz run {target}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("fuzz target {target} failed (see fuzz/artifacts/{target}):\n{}", tail.join("\n"));
    }
    Ok(Run { target: target.to_owned(), execs: executions(&log)?, seconds: time })
}

/// libFuzzer's `stat::number_of_executed_units` from `-print_final_stats=1`.
fn executions(log: &str) -> Result<u64> {
    log.lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|v| v.trim().parse().ok())
        .context("libFuzzer printed no stat::number_of_executed_units")
}

fn minimise(dir: &Path, target: &str) -> Result<()> {
    let st = nightly_cargo(dir)
        .args(["fuzz", "cmin", "-O", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("cargo fuzz cmin {target}"))?;
    if !st.success() {
        bail!("cargo fuzz cmin {target} failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn executions_come_from_the_final_stats() {
        let log = "#1000 DONE cov: 10\nstat::number_of_executed_units: 123456\nstat::x: 1\n";
        assert_eq!(super::executions(log).unwrap(), 123456);
        let e = super::executions("no stats").unwrap_err().to_string();
        assert_eq!(e, "libFuzzer printed no stat::number_of_executed_units");
    }
}
