//! Ratios against peers, the Markdown table and the JSON summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::record::{Better, Record};

/// The subject every comparison is about.
pub const LAMINA: &str = "lamina";

/// Stated goals: (suite, peer, least acceptable ratio of lamina to that peer). A suite's best
/// peer is not always the one a goal is about (in `guest` the raw disk beats both thin
/// providers), so goals name their peer, or [`BEST_PEER`] for whichever is best on each case.
pub const GOALS: &[(&str, &str, f64)] =
    &[("nbd", BEST_PEER, 1.0), ("guest", "kernel dm-thin", 0.8), ("layers", "umoci unpack", 2.0)];

/// A goal's peer meaning the best peer of each case.
pub const BEST_PEER: &str = "best peer";

/// One goal checked on one row.
#[derive(Clone, Debug, PartialEq)]
pub struct GoalCheck {
    pub suite: String,
    pub case: String,
    pub peer: String,
    pub goal: f64,
    pub ratio: f64,
}

impl GoalCheck {
    pub fn met(&self) -> bool {
        self.ratio >= self.goal
    }
}

/// Every goal of [`GOALS`] on the rows that measured its peer.
pub fn goals(rows: &[Comparison]) -> Vec<GoalCheck> {
    let mut out = Vec::new();
    for (suite, peer, goal) in GOALS {
        for r in rows.iter().filter(|r| r.suite == *suite) {
            let name = if *peer == BEST_PEER { r.best_peer.as_deref() } else { Some(*peer) };
            let Some((p, v)) = r.peers.iter().find(|(p, _)| Some(p.as_str()) == name) else {
                continue;
            };
            if let Some(ratio) = ratio(r.lamina, *v, r.better) {
                out.push(GoalCheck {
                    suite: r.suite.clone(),
                    case: r.case.clone(),
                    peer: p.clone(),
                    goal: *goal,
                    ratio,
                });
            }
        }
    }
    out
}

/// One row of the comparison table: lamina against the peers on one case.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Comparison {
    pub suite: String,
    pub case: String,
    pub metric: String,
    pub unit: String,
    pub better: Better,
    pub lamina: f64,
    /// (peer, value), in the order they were first seen.
    pub peers: Vec<(String, f64)>,
    /// lamina relative to the best peer: > 1 means lamina is better, whatever the metric's
    /// direction.
    pub ratio_vs_best: Option<f64>,
    pub best_peer: Option<String>,
}

/// Groups records by (suite, case, metric) and compares lamina with every other subject.
/// Repeated measurements of the same subject are reduced to their median.
pub fn compare(records: &[Record]) -> Vec<Comparison> {
    type Key = (String, String, String);
    /// unit, direction, and every subject's measurements in the order first seen.
    type Group = (String, Better, Vec<(String, Vec<f64>)>);
    let mut groups: BTreeMap<Key, Group> = BTreeMap::new();
    for r in records.iter().filter(|r| r.x.is_none()) {
        let key = (r.suite.clone(), r.case.clone(), r.metric.clone());
        let entry = groups.entry(key).or_insert_with(|| (r.unit.clone(), r.better, Vec::new()));
        match entry.2.iter_mut().find(|(s, _)| *s == r.subject) {
            Some((_, values)) => values.push(r.value),
            None => entry.2.push((r.subject.clone(), vec![r.value])),
        }
    }
    let mut out = Vec::new();
    for ((suite, case, metric), (unit, better, subjects)) in groups {
        let medians: Vec<(String, f64)> =
            subjects.into_iter().map(|(s, mut v)| (s, median(&mut v))).collect();
        let Some(lamina) = medians.iter().find(|(s, _)| s == LAMINA).map(|(_, v)| *v) else {
            continue;
        };
        let peers: Vec<(String, f64)> = medians.into_iter().filter(|(s, _)| s != LAMINA).collect();
        let best = peers.iter().cloned().reduce(|a, b| match better {
            Better::Higher if b.1 > a.1 => b,
            Better::Lower if b.1 < a.1 => b,
            _ => a,
        });
        let ratio_vs_best = best.as_ref().and_then(|(_, peer)| ratio(lamina, *peer, better));
        out.push(Comparison {
            suite,
            case,
            metric,
            unit,
            better,
            lamina,
            peers,
            ratio_vs_best,
            best_peer: best.map(|(s, _)| s),
        });
    }
    out
}

/// How many times better `ours` is than `theirs`.
pub fn ratio(ours: f64, theirs: f64, better: Better) -> Option<f64> {
    let r = match better {
        Better::Higher => ours / theirs,
        Better::Lower => theirs / ours,
    };
    r.is_finite().then_some(r)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// The Markdown table: one row per comparison, peers as `name value`, ratio against the best.
pub fn markdown(rows: &[Comparison], header: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{header}\n");
    let _ = writeln!(s, "| suite | case | metric | lamina | peers | lamina vs best peer |");
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for r in rows {
        let peers = r
            .peers
            .iter()
            .map(|(p, v)| format!("{p} {}", fmt_value(*v)))
            .collect::<Vec<_>>()
            .join("; ");
        let ratio = match (&r.ratio_vs_best, &r.best_peer) {
            (Some(x), Some(p)) => format!("{x:.2}x ({p})"),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} {} | {} | {} |",
            r.suite,
            r.case,
            r.metric,
            fmt_value(r.lamina),
            r.unit,
            if peers.is_empty() { "-".into() } else { peers },
            ratio
        );
    }
    let checks = goals(rows);
    if !checks.is_empty() {
        let _ = writeln!(s, "\nGoals:\n");
        for g in &checks {
            let _ = writeln!(
                s,
                "- {} {}: lamina {:.2}x {} (goal ≥ {:.2}x): {}",
                g.suite,
                g.case,
                g.ratio,
                g.peer,
                g.goal,
                if g.met() { "met" } else { "NOT met" }
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(case: &str, subject: &str, value: f64, better: Better) -> Record {
        Record {
            suite: "nbd".into(),
            case: case.into(),
            subject: subject.into(),
            metric: "throughput".into(),
            value,
            unit: "IOPS".into(),
            better,
            x: None,
        }
    }

    #[test]
    fn ratio_is_against_the_best_peer_in_the_metric_direction() {
        let rows = compare(&[
            rec("a", "lamina", 200.0, Better::Higher),
            rec("a", "nbdkit", 100.0, Better::Higher),
            rec("a", "qemu-nbd", 160.0, Better::Higher),
            rec("b", "lamina", 2.0, Better::Lower),
            rec("b", "qcow2", 4.0, Better::Lower),
            rec("b", "raw", 1.0, Better::Lower),
        ]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].best_peer.as_deref(), Some("qemu-nbd"));
        assert!((rows[0].ratio_vs_best.unwrap() - 1.25).abs() < 1e-9);
        assert_eq!(rows[1].best_peer.as_deref(), Some("raw"));
        assert!((rows[1].ratio_vs_best.unwrap() - 0.5).abs() < 1e-9);
        let md = markdown(&rows, "# t");
        assert!(md.contains("| nbd | a | throughput | 200 IOPS |"), "{md}");
        assert!(md.contains("1.25x (qemu-nbd)"), "{md}");
    }

    #[test]
    fn repeated_runs_reduce_to_the_median() {
        let rows = compare(&[
            rec("a", "lamina", 1.0, Better::Higher),
            rec("a", "lamina", 9.0, Better::Higher),
            rec("a", "lamina", 5.0, Better::Higher),
            rec("a", "peer", 5.0, Better::Higher),
        ]);
        assert_eq!(rows[0].lamina, 5.0);
        assert_eq!(rows[0].ratio_vs_best, Some(1.0));
    }

    #[test]
    fn goals_name_their_peer_not_the_best_one() {
        let g = |subject: &str, value: f64| Record {
            suite: "guest".into(),
            ..rec("4k", subject, value, Better::Higher)
        };
        let rows =
            compare(&[g("lamina", 90.0), g("kernel dm-thin", 100.0), g("raw virtio", 300.0)]);
        assert_eq!(rows[0].best_peer.as_deref(), Some("raw virtio"));
        let checks = goals(&rows);
        assert_eq!(checks.len(), 1);
        assert!((checks[0].ratio - 0.9).abs() < 1e-9 && checks[0].met());
        let md = markdown(&rows, "h");
        assert!(md.contains("- guest 4k: lamina 0.90x kernel dm-thin (goal ≥ 0.80x): met"), "{md}");
        let slow = compare(&[g("lamina", 70.0), g("kernel dm-thin", 100.0)]);
        assert!(markdown(&slow, "h").contains("0.70x kernel dm-thin (goal ≥ 0.80x): NOT met"));
        assert!(goals(&compare(&[rec("a", "lamina", 1.0, Better::Higher)])).is_empty());
    }

    #[test]
    fn a_best_peer_goal_takes_each_cases_best_peer() {
        // `rec` is already in the nbd suite.
        let n = |case: &str, subject: &str, value: f64| rec(case, subject, value, Better::Higher);
        let rows = compare(&[
            n("read", "lamina", 110.0),
            n("read", "nbdkit file", 100.0),
            n("read", "qemu-nbd raw", 50.0),
            n("cow", "lamina", 90.0),
            n("cow", "qemu-nbd qcow2", 100.0),
        ]);
        let checks = goals(&rows);
        assert_eq!(checks.len(), 2);
        let md = markdown(&rows, "h");
        assert!(md.contains("- nbd read: lamina 1.10x nbdkit file (goal ≥ 1.00x): met"), "{md}");
        assert!(md.contains("- nbd cow: lamina 0.90x qemu-nbd qcow2 (goal ≥ 1.00x): NOT met"));
    }

    #[test]
    fn cases_without_lamina_are_left_out() {
        assert!(compare(&[rec("a", "peer", 5.0, Better::Higher)]).is_empty());
    }
}
