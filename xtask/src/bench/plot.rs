//! SVG plots of the benchmark results: one bar chart per suite (every subject relative to the
//! best peer, so cases with different units share one axis) and one line chart per scaling
//! series (value against `x`, log scale).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::record::{Better, Record};
use super::report::{ratio, Comparison, LAMINA};

const PALETTE: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing plot: {e:?}")
}

/// Bars of each subject's performance relative to the best peer (1.0 = the best peer), per case.
pub fn suite_bars(dir: &Path, suite: &str, rows: &[&Comparison]) -> Result<PathBuf> {
    let path = dir.join(format!("{suite}.svg"));
    let mut subjects: Vec<String> = vec![LAMINA.into()];
    for r in rows {
        for (p, _) in &r.peers {
            if !subjects.contains(p) {
                subjects.push(p.clone());
            }
        }
    }
    // Each bar: (case index, subject index, standing relative to the best peer).
    let mut bars = Vec::new();
    for (ci, r) in rows.iter().enumerate() {
        let Some(best) = r.best_peer.as_ref().and_then(|b| r.peers.iter().find(|(p, _)| p == b))
        else {
            continue;
        };
        let all = std::iter::once((LAMINA.to_string(), r.lamina)).chain(r.peers.iter().cloned());
        for (subject, value) in all {
            let si = subjects.iter().position(|s| *s == subject).unwrap_or(0);
            bars.push((ci, si, ratio(value, best.1, r.better).unwrap_or(0.0)));
        }
    }
    // Headroom above the tallest bar keeps the legend (upper right) clear of the bars.
    let max_rel = bars.iter().map(|b| b.2).fold(1.2f64, f64::max) * 1.45;
    draw_bars(&path, suite, rows, &subjects, &bars, max_rel)?;
    Ok(path)
}

fn draw_bars(
    path: &Path,
    suite: &str,
    rows: &[&Comparison],
    subjects: &[String],
    bars: &[(usize, usize, f64)],
    max_rel: f64,
) -> Result<()> {
    let n_cases = rows.len().max(1);
    let width = (220 + 130 * n_cases) as u32;
    let root = SVGBackend::new(path, (width.max(640), 420)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let names: Vec<String> = rows.iter().map(|r| r.case.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{suite}: relative to the best peer (1.0), higher is better"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..n_cases as f64, 0f64..max_rel)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n_cases * 2 + 1)
        .x_label_formatter(&|x| {
            let i = (x - 0.5).round();
            if (x - 0.5 - i).abs() < 0.01 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("relative performance")
        .draw()
        .map_err(plot_err)?;
    let k = subjects.len() as f64;
    let w = 0.8 / k;
    for (si, subject) in subjects.iter().enumerate() {
        let color = PALETTE[si % PALETTE.len()];
        chart
            .draw_series(bars.iter().filter(|b| b.1 == si).map(|&(ci, _, rel)| {
                let x0 = ci as f64 + 0.1 + w * si as f64;
                Rectangle::new([(x0, 0.0), (x0 + w * 0.9, rel)], color.filled())
            }))
            .map_err(plot_err)?
            .label(subject.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .draw_series(LineSeries::new([(0.0, 1.0), (n_cases as f64, 1.0)], BLACK.stroke_width(1)))
        .map_err(plot_err)?;
    legend_and_present(&mut chart, &root, SeriesLabelPosition::UpperRight)
}

/// Line plots for records carrying `x` (scaling series), one file per suite and metric.
pub fn scaling_lines(dir: &Path, records: &[Record]) -> Result<Vec<PathBuf>> {
    let mut series: BTreeMap<(String, String), Vec<&Record>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.x.is_some()) {
        series.entry((r.suite.clone(), r.metric.clone())).or_default().push(r);
    }
    let mut out = Vec::new();
    for ((suite, metric), recs) in series {
        let path = dir.join(format!("{suite}-{}.svg", metric.replace([' ', '/'], "_")));
        draw_lines(&path, &suite, &metric, &recs)?;
        out.push(path);
    }
    Ok(out)
}

fn draw_lines(path: &Path, suite: &str, metric: &str, recs: &[&Record]) -> Result<()> {
    let xs = recs.iter().filter_map(|r| r.x);
    let (xmin, xmax) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let ymax = recs.iter().map(|r| r.value).fold(0f64, f64::max) * 1.15;
    let unit = recs[0].unit.clone();
    let dir_word = if recs[0].better == Better::Higher { "higher" } else { "lower" };
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{suite}: {metric} ({unit}, {dir_word} is better)"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin.max(1.0)..xmax.max(2.0)).log_scale(), 0f64..ymax.max(1e-9))
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(if suite == "layers" { "image size (MB)" } else { "mapped blocks" })
        .x_label_formatter(&|x| format!("1e{}", x.log10().round()))
        .y_desc(unit)
        .draw()
        .map_err(plot_err)?;
    let mut cases: Vec<&str> = recs.iter().map(|r| r.case.as_str()).collect();
    cases.dedup();
    cases.sort();
    cases.dedup();
    for (i, case) in cases.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let mut pts: Vec<(f64, f64)> = recs
            .iter()
            .filter(|r| r.case == *case)
            .filter_map(|r| r.x.map(|x| (x, r.value)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(case.to_string())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], color.stroke_width(2)));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(plot_err)?;
    }
    legend_and_present(&mut chart, &root, SeriesLabelPosition::MiddleRight)
}

/// Draws the series' legend at `position` on a pale box and writes the SVG file.
fn legend_and_present<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    root: &DrawingArea<SVGBackend<'a>, plotters::coord::Shift>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

#[cfg(test)]
mod tests {
    use super::super::report::compare;
    use super::*;

    fn rec(suite: &str, case: &str, subject: &str, value: f64, x: Option<f64>) -> Record {
        Record {
            suite: suite.into(),
            case: case.into(),
            subject: subject.into(),
            metric: "throughput".into(),
            value,
            unit: "IOPS".into(),
            better: Better::Higher,
            x,
        }
    }

    #[test]
    fn bars_and_lines_carry_their_legends() {
        let d = tempfile::tempdir().unwrap();
        let records = [
            rec("nbd", "4k read", LAMINA, 200.0, None),
            rec("nbd", "4k read", "nbdkit", 100.0, None),
            rec("scale", "walk", LAMINA, 10.0, Some(1e3)),
            rec("scale", "walk", LAMINA, 20.0, Some(1e5)),
        ];
        let rows = compare(&records[..2]);
        let bars = suite_bars(d.path(), "nbd", &rows.iter().collect::<Vec<_>>()).unwrap();
        let lines = scaling_lines(d.path(), &records).unwrap();
        let svg = std::fs::read_to_string(bars).unwrap();
        assert!(svg.contains("nbdkit") && svg.contains(LAMINA), "{svg}");
        assert_eq!(lines.len(), 1);
        let svg = std::fs::read_to_string(&lines[0]).unwrap();
        assert!(svg.contains("walk"), "{svg}");
    }
}
