//! The runner of init's boot: an ordered list of named steps, one error policy.
//!
//! Each [`Step`] names itself, says whether a failure stops the boot ([`Policy::Fatal`]: the
//! steps after it need what it makes) or is only reported ([`Policy::Report`]: the boot goes
//! on without it), and may decline to run in this boot (`skip`, e.g. storage-only mode). The
//! runner prints every step's name with its elapsed time on the console (`boot: NAME …`),
//! hands each failure to the context, and stops at the first fatal one. The list itself is
//! `sequence::steps()` (a private module); its order and policy run in host tests against a
//! recording fake system.

use std::time::Instant;

/// What a step's failure does to the boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The later steps need this one: its failure ends the list (the boot ends degraded).
    Fatal,
    /// Reported as a problem; the boot goes on.
    Report,
}

/// One named step over a context `C`.
pub struct Step<C: ?Sized, E> {
    pub name: &'static str,
    pub policy: Policy,
    /// Why the step does not run in this boot, or `None` when it runs.
    pub skip: fn(&C) -> Option<&'static str>,
    pub run: fn(&mut C) -> Result<(), E>,
}

/// Runs every step's `skip`: never skipped.
pub fn always<C: ?Sized>(_: &C) -> Option<&'static str> {
    None
}

/// What the runner needs from the context: a console and a place for failures.
pub trait Context<E> {
    fn say(&mut self, line: String);
    /// A step failed (the runner has already said so); record `error` as a problem.
    fn failed(&mut self, step: &'static str, policy: Policy, error: E);
}

/// How each step went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Skipped(&'static str),
    Failed(Policy),
}

/// The steps that ran (or were skipped) in order, and the fatal step that ended the list.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub steps: Vec<(&'static str, Outcome)>,
    pub stopped_at: Option<&'static str>,
}

/// Runs `steps` in order over `ctx` (see the module doc for the policy).
pub fn run<C: Context<E> + ?Sized, E>(steps: &[Step<C, E>], ctx: &mut C) -> Record {
    let mut record = Record::default();
    for s in steps {
        if let Some(why) = (s.skip)(ctx) {
            ctx.say(format!("boot: {} skipped ({why})", s.name));
            record.steps.push((s.name, Outcome::Skipped(why)));
            continue;
        }
        let t = Instant::now();
        let r = (s.run)(ctx);
        let took = t.elapsed().as_secs_f64();
        match r {
            Ok(()) => {
                ctx.say(format!("boot: {} ({took:.2}s)", s.name));
                record.steps.push((s.name, Outcome::Done));
            }
            Err(e) => {
                let then = match s.policy {
                    Policy::Fatal => "the steps after it do not run",
                    Policy::Report => "the boot goes on",
                };
                ctx.say(format!("boot: {} failed ({took:.2}s); {then}", s.name));
                ctx.failed(s.name, s.policy, e);
                record.steps.push((s.name, Outcome::Failed(s.policy)));
                if s.policy == Policy::Fatal {
                    record.stopped_at = Some(s.name);
                    break;
                }
            }
        }
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The failure of a test step: its name.
    #[derive(Debug, PartialEq, Eq)]
    struct Broke(&'static str);

    #[derive(Default)]
    struct Ctx {
        lines: Vec<String>,
        ran: Vec<&'static str>,
        failures: Vec<(&'static str, Policy, Broke)>,
        fail: Vec<&'static str>,
        off: bool,
    }

    impl Context<Broke> for Ctx {
        fn say(&mut self, line: String) {
            self.lines.push(line);
        }
        fn failed(&mut self, step: &'static str, policy: Policy, error: Broke) {
            self.failures.push((step, policy, error));
        }
    }

    fn step(name: &'static str, policy: Policy) -> Step<Ctx, Broke> {
        Step { name, policy, skip: always, run: |_| Ok(()) }
    }

    /// Three steps whose bodies record themselves and fail when named in `fail`.
    fn list() -> Vec<Step<Ctx, Broke>> {
        fn body(c: &mut Ctx, name: &'static str) -> Result<(), Broke> {
            c.ran.push(name);
            if c.fail.contains(&name) {
                return Err(Broke(name));
            }
            Ok(())
        }
        vec![
            Step { run: |c| body(c, "a"), ..step("a", Policy::Report) },
            Step {
                skip: |c| c.off.then_some("off"),
                run: |c| body(c, "b"),
                ..step("b", Policy::Fatal)
            },
            Step { run: |c| body(c, "c"), ..step("c", Policy::Report) },
        ]
    }

    #[test]
    fn steps_run_in_order_and_say_their_time() {
        let mut c = Ctx::default();
        let r = run(&list(), &mut c);
        assert_eq!(c.ran, ["a", "b", "c"]);
        assert_eq!(r.stopped_at, None);
        assert!(r.steps.iter().all(|(_, o)| *o == Outcome::Done), "{r:?}");
        assert_eq!(c.lines.len(), 3);
        assert!(
            c.lines[1].starts_with("boot: b (") && c.lines[1].ends_with("s)"),
            "{c:?}",
            c = c.lines
        );
    }

    #[test]
    fn a_fatal_failure_stops_the_list() {
        let mut c = Ctx { fail: vec!["b"], ..Ctx::default() };
        let r = run(&list(), &mut c);
        assert_eq!(c.ran, ["a", "b"]);
        assert_eq!(r.stopped_at, Some("b"));
        assert_eq!(c.failures, [("b", Policy::Fatal, Broke("b"))]);
        assert!(c.lines[1].contains("the steps after it do not run"), "{:?}", c.lines);
    }

    #[test]
    fn a_reported_failure_goes_on() {
        let mut c = Ctx { fail: vec!["a"], ..Ctx::default() };
        let r = run(&list(), &mut c);
        assert_eq!(c.ran, ["a", "b", "c"]);
        assert_eq!(r.stopped_at, None);
        assert_eq!(r.steps[0], ("a", Outcome::Failed(Policy::Report)));
        assert_eq!(c.failures.len(), 1);
    }

    #[test]
    fn a_skipped_step_says_why() {
        let mut c = Ctx { off: true, ..Ctx::default() };
        let r = run(&list(), &mut c);
        assert_eq!(c.ran, ["a", "c"]);
        assert_eq!(r.steps[1], ("b", Outcome::Skipped("off")));
        assert_eq!(c.lines[1], "boot: b skipped (off)");
    }
}
