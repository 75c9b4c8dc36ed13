//! Waiting on the guest: ask again until the answer comes or the deadline passes.
//!
//! A VM under TCG has no fixed pace, so a test never sleeps a guessed time and hopes; it polls
//! the condition it needs, and on time-out says what it saw last.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Calls `probe` every `every` until it breaks with a value, which is returned. `Continue`
/// carries what was seen instead, reported if `within` passes first; an `Err` from the probe
/// ends the wait at once.
pub fn until<T>(
    within: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<ControlFlow<T, String>>,
) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        match probe()? {
            ControlFlow::Break(v) => return Ok(v),
            ControlFlow::Continue(seen) if Instant::now() >= deadline => {
                bail!("not so after {within:?}: {seen}")
            }
            ControlFlow::Continue(_) => std::thread::sleep(every),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value_once_the_probe_breaks() {
        let mut n = 0;
        let got = until(Duration::from_secs(5), Duration::ZERO, || {
            n += 1;
            Ok(if n == 3 { ControlFlow::Break(n) } else { ControlFlow::Continue(format!("n={n}")) })
        });
        assert_eq!(got.unwrap(), 3);
    }

    #[test]
    fn a_time_out_names_what_was_seen_last() {
        let mut n = 0;
        let err = until::<()>(Duration::from_millis(30), Duration::from_millis(5), || {
            n += 1;
            Ok(ControlFlow::Continue(format!("still {n}")))
        })
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("not so after 30ms: still "), "{err}");
        assert!(n > 1, "polled more than once");
    }

    #[test]
    fn a_probe_error_ends_the_wait_at_once() {
        let mut n = 0;
        let err = until::<()>(Duration::from_secs(60), Duration::ZERO, || {
            n += 1;
            bail!("guest agent gone")
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "guest agent gone");
        assert_eq!(n, 1);
    }
}
