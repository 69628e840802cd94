//! The chart of `simulate --svg`: GiB stored over time, stacked by storage class, one panel
//! per policy, as a plain SVG file.
// Pixel positions are floats computed from small counts (days, panels, classes).
#![allow(clippy::cast_precision_loss)]

use std::fmt::Write as _;

use btrfs2s3_core::simulate::{Outcome, Report};

const WIDTH: f64 = 900.0;
const PANEL: f64 = 220.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 30.0;
const GIB: f64 = 1_073_741_824.0;

/// The colour of a storage class in the chart.
fn colour(index: usize) -> &'static str {
    const COLOURS: [&str; 8] = [
        "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f",
    ];
    COLOURS[index % COLOURS.len()]
}

/// GiB stored over time, stacked by storage class, one panel per policy.
pub fn svg(report: &Report) -> String {
    let classes: Vec<&String> = {
        let set: std::collections::BTreeSet<&String> = report
            .outcomes
            .iter()
            .flat_map(|o| o.days.iter().flat_map(|d| d.bytes_by_class.keys()))
            .collect();
        set.into_iter().collect()
    };
    let height = TOP + PANEL * report.outcomes.len() as f64 + 10.0;
    let days = report
        .outcomes
        .first()
        .map(|o| o.days.as_slice())
        .unwrap_or_default();
    let first_day = days.first().map_or("", |d| d.date.as_str());
    let last_day = days.last().map_or("", |d| d.date.as_str());
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="18" font-size="14">GiB stored by storage class, {} to {}</text>"#,
        escape_xml(first_day),
        escape_xml(last_day)
    );
    for (index, outcome) in report.outcomes.iter().enumerate() {
        panel(&mut out, outcome, &classes, TOP + PANEL * index as f64);
    }
    for (c, class) in classes.iter().enumerate() {
        let top = TOP + 20.0 + 18.0 * c as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            WIDTH - RIGHT + 14.0,
            top,
            colour(c),
            WIDTH - RIGHT + 32.0,
            top + 10.0,
            escape_xml(class)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// One policy's panel, `top` pixels down: its label, an area per class, the axes.
fn panel(out: &mut String, outcome: &Outcome, classes: &[&String], top: f64) {
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = PANEL - 50.0;
    let bottom = top + 20.0 + plot_height;
    let max = outcome
        .days
        .iter()
        .map(|d| d.bytes_by_class.values().sum::<u64>() as f64)
        .fold(0.0, f64::max)
        .max(1.0)
        / GIB;
    let days = outcome.days.len().max(2) as f64 - 1.0;
    let x = |i: usize| LEFT + plot_width * i as f64 / days;
    let y = |gib: f64| bottom - plot_height * gib / max;
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#,
        top + 14.0,
        escape_xml(&outcome.label)
    );
    let mut below = vec![0.0f64; outcome.days.len()];
    for (c, class) in classes.iter().enumerate() {
        let above: Vec<f64> = outcome
            .days
            .iter()
            .zip(&below)
            .map(|(day, base)| {
                base + day.bytes_by_class.get(*class).copied().unwrap_or(0) as f64 / GIB
            })
            .collect();
        if above == below {
            continue;
        }
        let mut points = String::new();
        for (i, value) in above.iter().enumerate() {
            let _ = write!(points, "{:.1},{:.1} ", x(i), y(*value));
        }
        for (i, value) in below.iter().enumerate().rev() {
            let _ = write!(points, "{:.1},{:.1} ", x(i), y(*value));
        }
        let _ = writeln!(
            out,
            r#"<polygon points="{}" fill="{}" fill-opacity="0.85"/>"#,
            points.trim_end(),
            colour(c)
        );
        below = above;
    }
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{bottom}" x2="{}" y2="{bottom}" stroke="#333"/><line x1="{LEFT}" y1="{}" x2="{LEFT}" y2="{bottom}" stroke="#333"/>"##,
        LEFT + plot_width,
        bottom - plot_height
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="end">{max:.0} GiB</text><text x="{}" y="{bottom}" text-anchor="end">0</text>"#,
        LEFT - 6.0,
        bottom - plot_height + 4.0,
        LEFT - 6.0
    );
    // A tick at the start and at each new year.
    for (i, day) in outcome.days.iter().enumerate() {
        if day.date.ends_with("-01-01") || i == 0 {
            let _ = writeln!(
                out,
                r##"<line x1="{0:.1}" y1="{bottom}" x2="{0:.1}" y2="{1}" stroke="#333"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
                x(i),
                bottom + 4.0,
                bottom + 16.0,
                escape_xml(&day.date)
            );
        }
    }
}

fn escape_xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
