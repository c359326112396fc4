//! The run report: one self-contained HTML page (inline CSS and SVG, no script, no external
//! resources, so it opens offline and can be attached to a CI run) that shows at a glance what
//! happened in a run:
//!
//! - a header with the overall verdict, the virtual-time span, the device count and the result
//!   codes of the Connections records;
//! - a timeline per device on one virtual-time axis: connected spans as bars, each close marked in
//!   the colour of its cause, refused or unanswered CONNECTs as ticks, faults as shaded bands;
//! - the connected-devices step chart on the same axis (always for the whole fleet, even when the
//!   timeline only draws the first rows);
//! - the expectations, with the events around each failure.
//!
//! Everything is read from the event log; every piece of text is escaped (device ids, close details
//! and refusal reasons come from untrusted peers).

/// Append formatted text to a `String` (which cannot fail).
macro_rules! put {
    ($out:expr, $($arg:tt)*) => {
        let _ = write!($out, $($arg)*);
    };
}

mod svg;
mod timeline;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use fakehub::events::series::{connected_device_count, CountSample};
use fakehub::{CloseCause, ResultCode};
use fakehub_assert::{Log, Verdict};

use svg::timeline_svg;
use timeline::{AttemptOutcome, Timeline};

/// At most this many device rows are drawn; the rest are summarised as "+N more".
const MAX_ROWS: usize = 40;

// SVG geometry, in CSS pixels.
const WIDTH: f64 = 1320.0;
/// Width of the device-id gutter left of the plot.
const GUTTER: f64 = 220.0;
const RIGHT_PAD: f64 = 28.0;
const ROW_H: f64 = 22.0;
const BAR_H: f64 = 10.0;
const LANE_H: f64 = 16.0;
const CHART_H: f64 = 120.0;
/// Device ids longer than this are shortened in the gutter (the full id is in the tooltip).
const LABEL_CHARS: usize = 30;

// The palette. The test looks for some of these in a screenshot, so keep them in step.
pub(crate) const BAR: &str = "#8fa9c8";
const REFUSED: &str = "#212529";
const UNANSWERED: &str = "#868e96";
/// Marks where a device process crashed, exited or was stopped.
const PROCESS: &str = "#000000";
const FAULT_BAND: &str = "#e03131";
const FAULT_TEXT: &str = "#c92a2a";
const SERIES: &str = "#1864ab";
const GRID: &str = "#e9ecef";
const AXIS_TEXT: &str = "#495057";

/// How the close of a connected span is drawn.
struct CloseStyle {
    color: &'static str,
    label: &'static str,
}

/// One style per kind of close, in legend order.
const CLOSE_STYLES: [CloseStyle; 11] = [
    CloseStyle {
        color: "#2f9e44",
        label: "graceful (DISCONNECT)",
    },
    CloseStyle {
        color: "#f08c00",
        label: "token expired",
    },
    CloseStyle {
        color: "#7048e8",
        label: "keep-alive timeout",
    },
    CloseStyle {
        color: "#e03131",
        label: "fault",
    },
    CloseStyle {
        color: "#7a1f1f",
        label: "device closed (no DISCONNECT)",
    },
    CloseStyle {
        color: "#1c7ed6",
        label: "takeover",
    },
    CloseStyle {
        color: "#adb5bd",
        label: "hub shutdown",
    },
    CloseStyle {
        color: "#d6336c",
        label: "protocol violation",
    },
    CloseStyle {
        color: "#0c8599",
        label: "session ended by the core",
    },
    CloseStyle {
        color: "#ad1457",
        label: "identity disabled or deleted",
    },
    CloseStyle {
        color: "#795548",
        label: "other",
    },
];

fn close_style_index(cause: CloseCause) -> usize {
    match cause {
        CloseCause::DeviceDisconnect => 0,
        CloseCause::TokenExpired => 1,
        CloseCause::KeepAliveTimeout => 2,
        CloseCause::Fault => 3,
        CloseCause::DeviceClosed => 4,
        CloseCause::Takeover => 5,
        CloseCause::HubShutdown => 6,
        CloseCause::ProtocolViolation => 7,
        CloseCause::CoreClosed => 8,
        CloseCause::Disabled | CloseCause::Deleted => 9,
        CloseCause::TlsFailed
        | CloseCause::Reprovisioned
        | CloseCause::NoConnect
        | CloseCause::Refused
        | CloseCause::Internal => 10,
    }
}

fn close_style(cause: CloseCause) -> &'static CloseStyle {
    &CLOSE_STYLES[close_style_index(cause)]
}

/// What the report draws from the log alone: the timeline's rows and the connected-devices
/// series. Made apart from the page so that a run can draw while it judges (for a fleet's log of
/// millions of events, each takes about a second).
pub struct Drawing {
    timeline: Timeline,
    series: Vec<CountSample>,
}

impl Drawing {
    pub fn of(log: &Log) -> Drawing {
        Drawing {
            timeline: Timeline::of(log),
            series: connected_device_count(log.events().iter().map(|e| e.as_ref())),
        }
    }
}

/// Render the report of a run as a complete HTML document.
///
/// `verdicts` pairs each expectation as the scenario wrote it (e.g. `recovers: { within: 60s }`)
/// with its verdict; the overall verdict is FAIL when any failed, CANNOT JUDGE when none failed but
/// some could not be judged, and PASS when every one passed.
pub fn render_html(title: &str, log: &Log, verdicts: &[(String, Verdict)]) -> String {
    render_drawn(title, log, &Drawing::of(log), verdicts)
}

/// [`render_html`] with the drawing already made from the same log.
pub fn render_drawn(
    title: &str,
    log: &Log,
    drawing: &Drawing,
    verdicts: &[(String, Verdict)],
) -> String {
    let Drawing { timeline, series } = drawing;
    let failing: BTreeSet<&str> = verdicts
        .iter()
        .filter(|(_, v)| v.judged && !v.passed)
        .filter_map(|(_, v)| v.device.as_deref())
        .collect();

    let mut out = String::with_capacity(32 * 1024);
    put!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{} — fakehub report</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        esc(title)
    );
    header(&mut out, title, log, timeline, verdicts);
    out.push_str("<section>\n<h2>Timeline <span class=\"sub\">virtual time since the start of the log</span></h2>\n");
    legend(&mut out, timeline);
    timeline_svg(&mut out, log, timeline, series, &failing);
    out.push_str("</section>\n");
    expectations(&mut out, verdicts);
    out.push_str("</body>\n</html>\n");
    out
}

const CSS: &str = "\
:root{color-scheme:light}\
body{margin:20px 24px;font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:#212529;background:#fff}\
h1{font-size:22px;margin:0}\
h2{font-size:16px;margin:18px 0 6px}\
h2 .sub{font-weight:normal;color:#868e96;font-size:13px;margin-left:6px}\
.titleline{display:flex;align-items:center;gap:14px}\
.badge{display:inline-block;padding:2px 10px;border-radius:4px;font-weight:700;color:#fff;letter-spacing:.04em}\
.badge.pass{background:#2f9e44}.badge.fail{background:#e03131}.badge.unjudged{background:#e8890c}\
.facts{display:flex;flex-wrap:wrap;gap:6px 28px;margin-top:10px}\
.facts .k{color:#868e96;margin-right:6px}\
.code{display:inline-block;font:12px ui-monospace,'DejaVu Sans Mono',monospace;background:#fff4e6;border:1px solid #ffd8a8;border-radius:3px;padding:0 5px;margin-right:6px}\
.code small{color:#868e96;margin-left:4px}\
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;font-size:12px;color:#495057;margin:4px 0 8px}\
.legend .item{display:inline-flex;align-items:center;gap:5px}\
.legend .absent{opacity:.4}\
svg.timeline{display:block;max-width:100%;height:auto}\
table{border-collapse:collapse;width:100%;max-width:1320px}\
th,td{text-align:left;vertical-align:top;padding:4px 8px;border-bottom:1px solid #e9ecef}\
th{color:#868e96;font-weight:600;font-size:12px}\
td code{font:12px ui-monospace,'DejaVu Sans Mono',monospace}\
td.result{font-weight:700}td.result.pass{color:#2f9e44}td.result.fail{color:#e03131}td.result.unjudged{color:#e8890c}\
tr.excerpt td{border-bottom:1px solid #dee2e6;padding-top:0}\
pre{margin:0;padding:6px 8px;background:#f8f9fa;border-left:3px solid #e03131;font:12px/1.35 ui-monospace,'DejaVu Sans Mono',monospace;overflow-x:auto}\
";

// ---------------------------------------------------------------------------------------------
// Header, legend, expectations

fn header(
    out: &mut String,
    title: &str,
    log: &Log,
    timeline: &Timeline,
    verdicts: &[(String, Verdict)],
) {
    let passed = verdicts.iter().filter(|(_, v)| v.passed).count();
    let (class, word) = overall(verdicts);
    put!(
        out,
        "<header>\n<div class=\"titleline\"><h1>{}</h1><span class=\"badge {class}\" id=\"verdict\">{word}</span></div>\n<div class=\"facts\">\n",
        esc(title)
    );
    put!(
        out,
        "<div><span class=\"k\">expectations</span>{passed} of {} passed</div>\n",
        verdicts.len()
    );
    let span = timeline
        .end
        .duration_since(timeline.start)
        .unwrap_or_default();
    put!(
        out,
        "<div><span class=\"k\">virtual time</span>{} <span class=\"k\">({} → {})</span></div>\n",
        esc(&human_duration(span)),
        fakehub::clock::rfc3339_seconds(timeline.start),
        fakehub::clock::rfc3339_seconds(timeline.end)
    );
    put!(
        out,
        "<div><span class=\"k\">devices</span>{}</div>\n",
        log.devices().len()
    );
    // Which clock each device kept (the time its verdicts are judged in), grouped by mode.
    let mut by_mode: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for (device, mode) in log.clock_modes() {
        by_mode.entry(mode.describe()).or_default().push(device);
    }
    if !by_mode.is_empty() {
        let parts: Vec<String> = by_mode
            .iter()
            .map(|(mode, devices)| {
                let who = if devices.len() <= 4 {
                    devices.join(", ")
                } else {
                    format!("{} devices", devices.len())
                };
                format!("{} — {}", esc(mode), esc(&who))
            })
            .collect();
        put!(
            out,
            "<div id=\"clocks\"><span class=\"k\">clock</span>{}</div>\n",
            parts.join(" · ")
        );
    }
    let sessions: usize = timeline.rows.values().map(|r| r.spans.len()).sum();
    let refused = timeline
        .rows
        .values()
        .flat_map(|r| &r.attempts)
        .filter(|a| matches!(a.outcome, AttemptOutcome::Refused { .. }))
        .count();
    let unanswered = timeline.rows.values().flat_map(|r| &r.attempts).count() - refused;
    put!(
        out,
        "<div><span class=\"k\">connections</span>{sessions} sessions · {refused} refused · {unanswered} unanswered</div>\n"
    );

    // Result codes of the Connections records, most frequent first.
    let mut codes: BTreeMap<u32, usize> = BTreeMap::new();
    for (_, code) in log.record_codes() {
        if let Some(code) = code {
            *codes.entry(code.code()).or_default() += 1;
        }
    }
    let mut codes: Vec<(u32, usize)> = codes.into_iter().collect();
    codes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out.push_str("<div id=\"codes\"><span class=\"k\">result codes</span>");
    if codes.is_empty() {
        out.push_str("none");
    }
    for (code, n) in codes {
        put!(
            out,
            "<span class=\"code\">{code} ×{n}<small>{}</small></span>",
            ResultCode::from_code(code).name()
        );
    }
    out.push_str("</div>\n</div>\n</header>\n");
}

fn legend(out: &mut String, timeline: &Timeline) {
    out.push_str("<div class=\"legend\">\n");
    put!(
        out,
        "<span class=\"item\"><svg width=\"26\" height=\"12\"><rect x=\"0\" y=\"1\" width=\"26\" height=\"{BAR_H}\" rx=\"2\" fill=\"{BAR}\"/></svg>connected</span>\n"
    );
    let counts = timeline.close_counts();
    for (style, n) in CLOSE_STYLES.iter().zip(counts) {
        let absent = if n == 0 { " absent" } else { "" };
        put!(
            out,
            "<span class=\"item{absent}\"><svg width=\"6\" height=\"16\"><rect x=\"1\" y=\"0\" width=\"4\" height=\"16\" fill=\"{}\"/></svg>{} ×{n}</span>\n",
            style.color,
            style.label
        );
    }
    put!(
        out,
        "<span class=\"item\"><svg width=\"6\" height=\"14\"><line x1=\"3\" y1=\"1\" x2=\"3\" y2=\"13\" stroke=\"{REFUSED}\" stroke-width=\"2\"/></svg>CONNECT refused</span>\n\
         <span class=\"item\"><svg width=\"10\" height=\"10\"><circle cx=\"5\" cy=\"5\" r=\"3.5\" fill=\"#fff\" stroke=\"{UNANSWERED}\" stroke-width=\"1.5\"/></svg>CONNECT unanswered</span>\n\
         <span class=\"item\"><svg width=\"10\" height=\"10\"><path d=\"M2 2 l6 6 M8 2 l-6 6\" stroke=\"{PROCESS}\" stroke-width=\"2\"/></svg>device process ended</span>\n\
         <span class=\"item\"><svg width=\"18\" height=\"14\"><rect x=\"0\" y=\"0\" width=\"18\" height=\"14\" fill=\"{FAULT_BAND}\" fill-opacity=\"0.12\"/><rect x=\"0\" y=\"0\" width=\"2\" height=\"14\" fill=\"{FAULT_BAND}\" fill-opacity=\"0.6\"/></svg>fault active</span>\n\
         <span class=\"item\"><svg width=\"26\" height=\"12\"><path d=\"M0 10 H9 V3 H18 V7 H26\" fill=\"none\" stroke=\"{SERIES}\" stroke-width=\"2\"/></svg>connected devices</span>\n"
    );
    out.push_str("</div>\n");
}

/// The CSS class and word of one verdict.
fn mark(v: &Verdict) -> (&'static str, &'static str) {
    match (v.judged, v.passed) {
        (false, _) => ("unjudged", "CANNOT JUDGE"),
        (true, true) => ("pass", "PASS"),
        (true, false) => ("fail", "FAIL"),
    }
}

/// The run's verdict: FAIL when any rule failed, else CANNOT JUDGE when any rule could not be
/// judged, else PASS.
fn overall(verdicts: &[(String, Verdict)]) -> (&'static str, &'static str) {
    if verdicts.iter().any(|(_, v)| v.judged && !v.passed) {
        ("fail", "FAIL")
    } else if verdicts.iter().any(|(_, v)| !v.judged) {
        ("unjudged", "CANNOT JUDGE")
    } else {
        ("pass", "PASS")
    }
}

fn expectations(out: &mut String, verdicts: &[(String, Verdict)]) {
    let passed = verdicts.iter().filter(|(_, v)| v.passed).count();
    put!(
        out,
        "<section>\n<h2>Expectations <span class=\"sub\">{passed} of {} passed</span></h2>\n",
        verdicts.len()
    );
    if verdicts.is_empty() {
        out.push_str("<p>No expectations.</p>\n</section>\n");
        return;
    }
    out.push_str(
        "<table id=\"expectations\">\n<tr><th>result</th><th>expectation</th><th>device</th><th>summary</th></tr>\n",
    );
    for (text, v) in verdicts {
        let (class, word) = mark(v);
        let text = if text.trim().is_empty() {
            &v.rule
        } else {
            text
        };
        put!(
            out,
            "<tr class=\"{class}\"><td class=\"result {class}\">{word}</td><td><code>{}</code></td><td><code>{}</code></td><td>{}</td></tr>\n",
            esc(text),
            esc(v.device.as_deref().unwrap_or("fleet")),
            esc(&v.summary)
        );
        if !v.excerpt.is_empty() {
            out.push_str("<tr class=\"excerpt\"><td></td><td colspan=\"3\"><pre>");
            for line in &v.excerpt {
                out.push_str(&esc(line));
                out.push('\n');
            }
            out.push_str("</pre></td></tr>\n");
        }
    }
    out.push_str("</table>\n</section>\n");
}

/// A duration for people: milliseconds under a minute, whole seconds above.
fn human_duration(d: Duration) -> String {
    let rounded = if d < Duration::from_secs(60) {
        Duration::from_millis(d.as_millis() as u64)
    } else {
        Duration::from_secs(d.as_secs())
    };
    humantime::format_duration(rounded).to_string()
}

/// `Hub` → `hub`, `Fin` → `fin`.
fn lower_debug(v: &impl std::fmt::Debug) -> String {
    format!("{v:?}").to_lowercase()
}

/// At most `max` characters, with an ellipsis when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Escape text for HTML and SVG content and attribute values. Control characters (which a peer
/// could put in an id) become U+FFFD so they cannot upset the document.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_controls() {
        assert_eq!(
            esc("<evil>&\"x\"'\u{1b}"),
            "&lt;evil&gt;&amp;&quot;x&quot;&#39;\u{FFFD}"
        );
    }
}
