//! Crash points for tests.
//!
//! [`point`] marks a place where a crash leaves interesting state on disk (a layer placed but
//! not yet recorded, ...). Builds with the `fault-points` feature (only the crate's own tests
//! turn it on, through a dev-dependency on itself) let a test install a hook that runs there,
//! e.g. one that SIGKILLs the process. Without the feature `point` is empty: release
//! binaries carry no switch.

#[cfg(feature = "fault-points")]
static HOOK: std::sync::OnceLock<fn(&str)> = std::sync::OnceLock::new();

/// Install the hook called at every crash point (once per process).
#[cfg(feature = "fault-points")]
pub fn set_hook(hook: fn(&str)) {
    let _ = HOOK.set(hook);
}

/// A named crash point.
#[inline]
pub(crate) fn point(_name: &str) {
    #[cfg(feature = "fault-points")]
    if let Some(h) = HOOK.get() {
        h(_name);
    }
}
