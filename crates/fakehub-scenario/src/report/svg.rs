//! The SVG: fault lanes, the time axis, one row per identity, and the connected-devices chart.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::SystemTime;

use fakehub::events::series::CountSample;
use fakehub_assert::Log;

use super::timeline::{AttemptOutcome, FaultBand, Row, Timeline};
use super::*;

/// Maps virtual time onto the plot's x range.
struct Axis {
    start: SystemTime,
    secs: f64,
    x0: f64,
    width: f64,
}

impl Axis {
    fn x(&self, t: SystemTime) -> f64 {
        let d = t
            .duration_since(self.start)
            .unwrap_or_default()
            .as_secs_f64();
        self.x0 + (d / self.secs).clamp(0.0, 1.0) * self.width
    }

    fn x_secs(&self, secs: f64) -> f64 {
        self.x0 + (secs / self.secs).clamp(0.0, 1.0) * self.width
    }
}

pub(super) fn timeline_svg(
    out: &mut String,
    log: &Log,
    timeline: &Timeline,
    series: &[CountSample],
    failing: &BTreeSet<&str>,
) {
    let span = timeline
        .end
        .duration_since(timeline.start)
        .unwrap_or_default();
    let axis = Axis {
        start: timeline.start,
        // An empty or instantaneous log still gets a one-second axis.
        secs: span.as_secs_f64().max(1.0),
        x0: GUTTER,
        width: WIDTH - GUTTER - RIGHT_PAD,
    };
    let (rows, hidden) = timeline.visible_rows(failing);
    let lanes = fault_lanes(&timeline.faults, &axis, timeline.end);
    let n_lanes = lanes.iter().map(|l| l + 1).max().unwrap_or(0);

    // Vertical layout, top to bottom.
    let lanes_y = 4.0;
    let axis_label_y = lanes_y + n_lanes as f64 * LANE_H + 12.0;
    let rows_y = axis_label_y + 8.0;
    let row_slots = rows.len() + usize::from(hidden > 0);
    let rows_end = rows_y + row_slots as f64 * ROW_H;
    let chart_y = rows_end + 30.0;
    let chart_bottom = chart_y + CHART_H;
    let height = chart_bottom + 24.0;
    let plot_right = axis.x0 + axis.width;

    put!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"timeline\" width=\"{WIDTH}\" height=\"{height:.0}\" viewBox=\"0 0 {WIDTH} {height:.0}\" font-family=\"system-ui,'DejaVu Sans',sans-serif\" font-size=\"11\">\n"
    );

    // Zebra rows, so a bar can be followed to its device id.
    for i in (0..row_slots).step_by(2) {
        put!(
            out,
            "<rect x=\"0\" y=\"{:.1}\" width=\"{WIDTH}\" height=\"{ROW_H}\" fill=\"#f8f9fa\"/>\n",
            rows_y + i as f64 * ROW_H
        );
    }

    // Grid lines and tick labels, top (above the rows) and bottom (below the chart).
    let step = tick_step(axis.secs);
    let mut tick = 0u64;
    while tick as f64 <= axis.secs + 1e-9 {
        let x = axis.x_secs(tick as f64);
        let label = tick_label(tick, step);
        put!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{rows_y:.1}\" x2=\"{x:.1}\" y2=\"{chart_bottom:.1}\" stroke=\"{GRID}\"/>\n\
             <text x=\"{x:.1}\" y=\"{axis_label_y:.1}\" text-anchor=\"middle\" fill=\"{AXIS_TEXT}\">{label}</text>\n\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"{AXIS_TEXT}\">{label}</text>\n",
            chart_bottom + 15.0
        );
        tick += step;
    }

    // Fault bands across every row and the chart, labelled in their lane above the axis.
    for (band, lane) in timeline.faults.iter().zip(&lanes) {
        let x1 = axis.x(band.from);
        let to = band.to.unwrap_or(timeline.end);
        let w = (axis.x(to) - x1).max(2.0);
        let label_y = lanes_y + *lane as f64 * LANE_H + 11.0;
        let until = match band.to {
            Some(t) => log.at(t),
            None => "end of log".to_owned(),
        };
        put!(
            out,
            "<g class=\"fault\"><title>fault {} (#{}): {} → {}</title>\
             <rect x=\"{x1:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{FAULT_BAND}\" fill-opacity=\"0.10\"/>\
             <rect x=\"{x1:.1}\" y=\"{:.1}\" width=\"1.5\" height=\"{:.1}\" fill=\"{FAULT_BAND}\" fill-opacity=\"0.6\"/>\
             <text x=\"{:.1}\" y=\"{label_y:.1}\" fill=\"{FAULT_TEXT}\" font-weight=\"600\">{}</text></g>\n",
            esc(&band.name),
            band.id,
            log.at(band.from),
            esc(&until),
            label_y - 10.0,
            chart_bottom - (label_y - 10.0),
            label_y - 10.0,
            chart_bottom - (label_y - 10.0),
            x1 + 3.0,
            esc(&band.name)
        );
    }

    for (i, id) in rows.iter().enumerate() {
        let mid = rows_y + i as f64 * ROW_H + ROW_H / 2.0;
        device_row(
            out,
            log,
            &axis,
            id,
            &timeline.rows[*id],
            mid,
            failing.contains(id),
        );
    }
    if hidden > 0 {
        put!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"{AXIS_TEXT}\" font-style=\"italic\" id=\"more-rows\">+{hidden} more</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"{AXIS_TEXT}\" font-style=\"italic\">{hidden} more devices not drawn; the chart below counts the whole fleet</text>\n",
            GUTTER - 8.0,
            rows_y + rows.len() as f64 * ROW_H + 15.0,
            GUTTER + 4.0,
            rows_y + rows.len() as f64 * ROW_H + 15.0
        );
    }

    count_chart(out, &axis, timeline, series, chart_y, chart_bottom);
    put!(
        out,
        "<line x1=\"{GUTTER}\" y1=\"{chart_bottom:.1}\" x2=\"{plot_right:.1}\" y2=\"{chart_bottom:.1}\" stroke=\"#ced4da\"/>\n</svg>\n"
    );
}

/// One device row: its id in the gutter, a track, connected bars with close markers, and ticks for
/// CONNECTs that did not connect.
fn device_row(
    out: &mut String,
    log: &Log,
    axis: &Axis,
    id: &str,
    row: &Row,
    mid: f64,
    failed: bool,
) {
    let fill = if failed { FAULT_TEXT } else { "#212529" };
    let weight = if failed { " font-weight=\"700\"" } else { "" };
    put!(
        out,
        "<g class=\"row\" data-device=\"{}\"><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"{fill}\"{weight} font-family=\"ui-monospace,'DejaVu Sans Mono',monospace\"><title>{}</title>{}</text>\
         <line x1=\"{GUTTER}\" y1=\"{mid:.1}\" x2=\"{:.1}\" y2=\"{mid:.1}\" stroke=\"#dee2e6\"/>\n",
        esc(id),
        GUTTER - 8.0,
        mid + 4.0,
        esc(id),
        esc(&shorten(id, LABEL_CHARS)),
        axis.x0 + axis.width
    );
    for span in &row.spans {
        let x1 = axis.x(span.from);
        let x2 = axis.x(span.to);
        let mut tip = format!(
            "conn {}: connected {} → {} ({})",
            span.conn,
            log.at(span.from),
            log.at(span.to),
            human_duration(span.to.duration_since(span.from).unwrap_or_default())
        );
        match &span.close {
            Some(c) => {
                let _ = write!(
                    tip,
                    "; closed by {} ({}): {}",
                    lower_debug(&c.by),
                    lower_debug(&c.how),
                    close_style(c.cause).label
                );
                if let Some(code) = c.result {
                    let _ = write!(tip, ", {code}");
                }
                if let Some(d) = &c.detail {
                    let _ = write!(tip, ", {}", shorten(d, 300));
                }
            }
            None => tip.push_str("; still connected at the end of the log"),
        }
        put!(
            out,
            "<g><title>{}</title><rect x=\"{x1:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{BAR_H}\" rx=\"2\" fill=\"{BAR}\"/></g>\n",
            esc(&tip),
            mid - BAR_H / 2.0,
            (x2 - x1).max(1.5)
        );
    }
    // Close markers after all bars, so a quick reconnect's bar does not hide the close before it.
    for span in &row.spans {
        let Some(c) = &span.close else { continue };
        let style = close_style(c.cause);
        put!(
            out,
            "<rect class=\"close\" x=\"{:.0}\" y=\"{:.1}\" width=\"4\" height=\"18\" fill=\"{}\"><title>conn {}: {} at {}</title></rect>\n",
            (axis.x(span.to) - 2.0).round(),
            mid - 9.0,
            style.color,
            span.conn,
            style.label,
            log.at(span.to)
        );
    }
    for a in &row.attempts {
        // Whole pixels keep the thin ticks crisp.
        let x = axis.x(a.at).round();
        let (class, what, result, why, mark) = match &a.outcome {
            AttemptOutcome::Refused {
                code,
                result,
                reason,
            } => (
                "refused",
                format!("CONNECT refused at {}: CONNACK {code}", log.at(a.at)),
                result,
                reason,
                format!(
                    "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{REFUSED}\" stroke-width=\"2\"/>",
                    mid - 6.0,
                    mid + 6.0
                ),
            ),
            AttemptOutcome::Unanswered { result, detail } => (
                "unanswered",
                format!("CONNECT at {} never answered", log.at(a.at)),
                result,
                detail,
                format!(
                    "<circle cx=\"{x:.1}\" cy=\"{mid:.1}\" r=\"3.5\" fill=\"#fff\" stroke=\"{UNANSWERED}\" stroke-width=\"1.5\"/>"
                ),
            ),
        };
        let mut tip = format!("conn {}: {what}", a.conn);
        if let Some(r) = result {
            let _ = write!(tip, ", {r} {}", r.name());
        }
        if let Some(why) = why {
            let _ = write!(tip, ": {}", shorten(why, 300));
        }
        put!(
            out,
            "<g class=\"{class}\"><title>{}</title>{mark}</g>\n",
            esc(&tip)
        );
    }
    for (at, how) in &row.process_ends {
        // A cross above the row: the device's process went away.
        let x = axis.x(*at).round();
        put!(
            out,
            "<g class=\"process\"><title>device process {} at {}</title><path d=\"M{:.1} {:.1} l6 6 M{:.1} {:.1} l-6 6\" stroke=\"{PROCESS}\" stroke-width=\"2\"/></g>\n",
            esc(how),
            log.at(*at),
            x - 3.0,
            mid - 12.0,
            x + 3.0,
            mid - 12.0
        );
    }
    out.push_str("</g>\n");
}

/// The connected-devices series as a filled step line between `top` and `bottom`.
fn count_chart(
    out: &mut String,
    axis: &Axis,
    timeline: &Timeline,
    series: &[CountSample],
    top: f64,
    bottom: f64,
) {
    let max = series.iter().map(|s| s.count).max().unwrap_or(0).max(1);
    let y = |count: usize| bottom - count as f64 / max as f64 * (bottom - top - 6.0);
    put!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#212529\" font-weight=\"600\">connected devices</text>\n",
        GUTTER - 8.0,
        top - 8.0
    );
    // Value gridlines at 0, the midpoint (when it is a whole number) and the peak.
    let mut marks = vec![0, max];
    if max >= 4 && max % 2 == 0 {
        marks.push(max / 2);
    }
    for m in marks {
        let ym = y(m);
        put!(
            out,
            "<line x1=\"{GUTTER}\" y1=\"{ym:.1}\" x2=\"{:.1}\" y2=\"{ym:.1}\" stroke=\"{GRID}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"{AXIS_TEXT}\">{m}</text>\n",
            axis.x0 + axis.width,
            GUTTER - 8.0,
            ym + 4.0
        );
    }
    // Steps: only changes matter (the per-minute samples repeat the current value).
    let mut line = format!("M{:.1} {:.1}", axis.x0, y(0));
    let mut current = 0usize;
    for s in series {
        if s.count != current {
            let _ = write!(line, " H{:.1} V{:.1}", axis.x(s.time), y(s.count));
            current = s.count;
        }
    }
    let _ = write!(line, " H{:.1}", axis.x(timeline.end));
    let peak = series.iter().map(|s| s.count).max().unwrap_or(0);
    put!(
        out,
        "<g id=\"connected-devices\"><title>connected devices (peak {peak})</title>\
         <path d=\"{line} V{:.1} H{:.1} Z\" fill=\"{SERIES}\" fill-opacity=\"0.12\" stroke=\"none\"/>\
         <path d=\"{line}\" fill=\"none\" stroke=\"{SERIES}\" stroke-width=\"2\" stroke-linejoin=\"round\"/></g>\n",
        y(0),
        axis.x0
    );
}

/// Lanes for fault labels, so overlapping or adjacent faults do not write over each other.
fn fault_lanes(faults: &[FaultBand], axis: &Axis, end: SystemTime) -> Vec<usize> {
    // The right edge of what is already in each lane (band or label, whichever is wider).
    let mut lane_ends: Vec<f64> = Vec::new();
    let mut order: Vec<usize> = (0..faults.len()).collect();
    order.sort_by_key(|&i| faults[i].from);
    let mut lanes = vec![0; faults.len()];
    for i in order {
        let f = &faults[i];
        let x1 = axis.x(f.from);
        let label_end = x1 + 8.0 + 6.5 * f.name.chars().count() as f64;
        let right = axis.x(f.to.unwrap_or(end)).max(label_end);
        let lane = match lane_ends.iter().position(|&e| e < x1) {
            Some(l) => l,
            None => {
                lane_ends.push(0.0);
                lane_ends.len() - 1
            }
        };
        lane_ends[lane] = right;
        lanes[i] = lane;
    }
    lanes
}

// ---------------------------------------------------------------------------------------------
// Formatting

/// The tick spacing, in seconds: a round step that gives at most a dozen ticks.
fn tick_step(span_secs: f64) -> u64 {
    const STEPS: [u64; 20] = [
        1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
        172_800, 604_800,
    ];
    const WEEK: f64 = 604_800.0;
    STEPS
        .iter()
        .copied()
        .find(|&s| span_secs / s as f64 <= 12.0)
        // Runs of months: whole weeks.
        .unwrap_or_else(|| ((span_secs / 12.0 / WEEK).ceil() * WEEK) as u64)
}

/// A tick label: `0m`, `15m`, `1h05m`, `2d06h`; with seconds when the step is finer than a
/// minute.
fn tick_label(secs: u64, step: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        return match (h, m) {
            (0, 0) => format!("{d}d"),
            (h, 0) => format!("{d}d{h:02}h"),
            (h, m) => format!("{d}d{h:02}h{m:02}m"),
        };
    }
    match (h, m, s) {
        (0, 0, 0) if step < 60 => "0s".to_owned(),
        (0, 0, s) if s > 0 => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, 0) => format!("{h}h{m:02}m"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels() {
        assert_eq!(tick_label(0, 900), "0m");
        assert_eq!(tick_label(900, 900), "15m");
        assert_eq!(tick_label(3900, 300), "1h05m");
        assert_eq!(tick_label(0, 10), "0s");
        assert_eq!(tick_label(30, 10), "30s");
        assert_eq!(tick_label(90, 30), "1m30s");
        assert_eq!(tick_label(86400 + 6 * 3600, 21600), "1d06h");
        assert_eq!(tick_label(2 * 86400, 86400), "2d");
        assert_eq!(tick_step(5400.0), 600);
        assert_eq!(tick_step(0.5), 1);
        assert_eq!(tick_step(365.0 * 86400.0), 5 * 604_800);
    }
}
