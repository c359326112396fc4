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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use fakehub::events::records::describe as describe_code;
use fakehub::events::series::{connected_device_count, CountSample};
use fakehub::events::FaultAction;
use fakehub::{CloseCause, CloseHow, Closer, Event, EventKind};
use fakehub_assert::{Log, Verdict};

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
const BAR: &str = "#8fa9c8";
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
        label: "identity disabled",
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
        CloseCause::Disabled => 9,
        CloseCause::TlsFailed | CloseCause::NoConnect | CloseCause::Refused => 10,
    }
}

fn close_style(cause: CloseCause) -> &'static CloseStyle {
    &CLOSE_STYLES[close_style_index(cause)]
}

/// Append formatted text to a `String` (which cannot fail).
macro_rules! put {
    ($out:expr, $($arg:tt)*) => {
        let _ = write!($out, $($arg)*);
    };
}

/// Render the report of a run as a complete HTML document.
///
/// `verdicts` pairs each expectation as the scenario wrote it (e.g. `recovers: { within: 60s }`)
/// with its verdict; the overall verdict is PASS when every one passed.
pub fn render_html(title: &str, log: &Log, verdicts: &[(String, Verdict)]) -> String {
    let timeline = Timeline::of(log);
    let series = connected_device_count(log.events().iter().map(|e| e.as_ref()));
    let failing: BTreeSet<&str> = verdicts
        .iter()
        .filter(|(_, v)| !v.passed)
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
    header(&mut out, title, log, &timeline, verdicts);
    out.push_str("<section>\n<h2>Timeline <span class=\"sub\">virtual time since the start of the log</span></h2>\n");
    legend(&mut out, &timeline);
    timeline_svg(&mut out, log, &timeline, &series, &failing);
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
.badge.pass{background:#2f9e44}.badge.fail{background:#e03131}\
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
td.result{font-weight:700}td.result.pass{color:#2f9e44}td.result.fail{color:#e03131}\
tr.excerpt td{border-bottom:1px solid #dee2e6;padding-top:0}\
pre{margin:0;padding:6px 8px;background:#f8f9fa;border-left:3px solid #e03131;font:12px/1.35 ui-monospace,'DejaVu Sans Mono',monospace;overflow-x:auto}\
";

// ---------------------------------------------------------------------------------------------
// What happened, per identity

/// A connected span: from CONNACK 0 to its `closed` event (or the end of the log).
struct Span {
    conn: u64,
    from: SystemTime,
    to: SystemTime,
    /// None while still connected at the end of the log.
    close: Option<Close>,
}

struct Close {
    cause: CloseCause,
    by: Closer,
    how: CloseHow,
    detail: Option<String>,
    result: Option<u32>,
}

/// A CONNECT that did not lead to a connected session.
struct Attempt {
    conn: u64,
    at: SystemTime,
    outcome: AttemptOutcome,
}

enum AttemptOutcome {
    /// CONNACK with a non-zero return code.
    Refused {
        code: u8,
        result: Option<u32>,
        reason: Option<String>,
    },
    /// The hub never answered (e.g. an outage that hangs CONNECTs); the connection then closed.
    Unanswered {
        result: Option<u32>,
        detail: Option<String>,
    },
}

#[derive(Default)]
struct Row {
    spans: Vec<Span>,
    attempts: Vec<Attempt>,
    /// Ends of the device's process (crashed, exited, stopped), from `device_process` events.
    process_ends: Vec<(SystemTime, String)>,
}

struct FaultBand {
    id: u64,
    name: String,
    from: SystemTime,
    /// None if the fault had not ended by the end of the log.
    to: Option<SystemTime>,
}

/// Per-connection state while reading the log.
#[derive(Default)]
struct ConnState {
    who: Option<String>,
    connect_at: Option<SystemTime>,
    connected_at: Option<SystemTime>,
    answered: bool,
}

/// The log folded into what the timeline draws.
struct Timeline {
    start: SystemTime,
    end: SystemTime,
    /// Per identity (`device` or `device/module`), sorted by id.
    rows: BTreeMap<String, Row>,
    faults: Vec<FaultBand>,
}

/// The identity an event is about: `device`, or `device/module` for a module.
fn identity(e: &Event) -> Option<String> {
    match (&e.device, &e.module) {
        (Some(d), Some(m)) => Some(format!("{d}/{m}")),
        (Some(d), None) => Some(d.clone()),
        _ => None,
    }
}

impl Timeline {
    fn of(log: &Log) -> Timeline {
        let start = log.start();
        let end = log.events().iter().map(|e| e.time).max().unwrap_or(start);
        let mut rows: BTreeMap<String, Row> = BTreeMap::new();
        let mut conns: HashMap<u64, ConnState> = HashMap::new();
        let mut faults: Vec<FaultBand> = Vec::new();

        for e in log.events() {
            let who = identity(e);
            if let Some(w) = &who {
                rows.entry(w.clone()).or_default();
            }
            if let EventKind::Fault {
                id, action, fault, ..
            } = &e.kind
            {
                match action {
                    FaultAction::Started => faults.push(FaultBand {
                        id: *id,
                        name: fault.clone(),
                        from: e.time,
                        to: None,
                    }),
                    FaultAction::Ended => {
                        if let Some(band) =
                            faults.iter_mut().find(|f| f.id == *id && f.to.is_none())
                        {
                            band.to = Some(e.time);
                        }
                    }
                }
                continue;
            }
            if let (
                EventKind::DeviceProcess {
                    action,
                    code,
                    signal,
                },
                Some(w),
            ) = (&e.kind, &who)
            {
                if matches!(action.as_str(), "crashed" | "exited" | "stopped") {
                    let how = match (code, signal) {
                        (_, Some(sig)) => format!("{action} (signal {sig})"),
                        (Some(c), None) => format!("{action} (exit status {c})"),
                        (None, None) => action.clone(),
                    };
                    rows.entry(w.clone())
                        .or_default()
                        .process_ends
                        .push((e.time, how));
                }
                continue;
            }
            let Some(conn) = e.conn else { continue };
            if let EventKind::Closed {
                by,
                how,
                cause,
                detail,
                result,
            } = &e.kind
            {
                let state = conns.remove(&conn).unwrap_or_default();
                let Some(w) = state.who.or(who) else { continue };
                let row = rows.entry(w).or_default();
                if let Some(from) = state.connected_at {
                    row.spans.push(Span {
                        conn,
                        from,
                        to: e.time,
                        close: Some(Close {
                            cause: *cause,
                            by: *by,
                            how: *how,
                            detail: detail.clone(),
                            result: *result,
                        }),
                    });
                } else if let (Some(at), false) = (state.connect_at, state.answered) {
                    row.attempts.push(Attempt {
                        conn,
                        at,
                        outcome: AttemptOutcome::Unanswered {
                            result: *result,
                            detail: detail.clone(),
                        },
                    });
                }
                continue;
            }
            let state = conns.entry(conn).or_default();
            if state.who.is_none() {
                state.who = who;
            }
            match &e.kind {
                EventKind::Connect { .. } => state.connect_at = Some(e.time),
                EventKind::Connack { code: 0, .. } => {
                    state.answered = true;
                    state.connected_at = Some(e.time);
                }
                EventKind::Connack {
                    code,
                    result,
                    reason,
                    ..
                } => {
                    state.answered = true;
                    if let Some(w) = &state.who {
                        rows.entry(w.clone()).or_default().attempts.push(Attempt {
                            conn,
                            at: e.time,
                            outcome: AttemptOutcome::Refused {
                                code: *code,
                                result: *result,
                                reason: reason.clone(),
                            },
                        });
                    }
                }
                _ => {}
            }
        }
        // Sessions still connected when the log ends run to its end.
        for (conn, state) in conns {
            if let (Some(w), Some(from)) = (state.who, state.connected_at) {
                rows.entry(w).or_default().spans.push(Span {
                    conn,
                    from,
                    to: end,
                    close: None,
                });
            }
        }
        for row in rows.values_mut() {
            row.spans.sort_by_key(|s| (s.from, s.conn));
        }
        Timeline {
            start,
            end,
            rows,
            faults,
        }
    }

    /// How many closes of each style (indexed like `CLOSE_STYLES`).
    fn close_counts(&self) -> [usize; CLOSE_STYLES.len()] {
        let mut counts = [0; CLOSE_STYLES.len()];
        for span in self.rows.values().flat_map(|r| &r.spans) {
            if let Some(c) = &span.close {
                counts[close_style_index(c.cause)] += 1;
            }
        }
        counts
    }

    /// The rows to draw: devices with a failing expectation first, then the rest in id order, at
    /// most `MAX_ROWS`, drawn in id order. Also returns how many were left out.
    fn visible_rows(&self, failing: &BTreeSet<&str>) -> (Vec<&str>, usize) {
        let ids: Vec<&str> = self.rows.keys().map(String::as_str).collect();
        if ids.len() <= MAX_ROWS {
            return (ids, 0);
        }
        let mut chosen: BTreeSet<&str> = ids
            .iter()
            .copied()
            .filter(|id| failing.contains(id))
            .take(MAX_ROWS)
            .collect();
        for id in &ids {
            if chosen.len() >= MAX_ROWS {
                break;
            }
            chosen.insert(id);
        }
        let hidden = ids.len() - chosen.len();
        (chosen.into_iter().collect(), hidden)
    }
}

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
    let all_passed = passed == verdicts.len();
    let (class, word) = if all_passed {
        ("pass", "PASS")
    } else {
        ("fail", "FAIL")
    };
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
        humantime::format_rfc3339_seconds(timeline.start),
        humantime::format_rfc3339_seconds(timeline.end)
    );
    put!(
        out,
        "<div><span class=\"k\">devices</span>{}</div>\n",
        log.devices().len()
    );
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
    for record in log.records() {
        if let Some(code) = record.code() {
            *codes.entry(code).or_default() += 1;
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
            describe_code(code).0
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
        let (class, word) = if v.passed {
            ("pass", "PASS")
        } else {
            ("fail", "FAIL")
        };
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
        if !v.passed && !v.excerpt.is_empty() {
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

// ---------------------------------------------------------------------------------------------
// The SVG: fault lanes, time axis, device rows, connected-devices chart

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

fn timeline_svg(
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
            let _ = write!(tip, ", {r} {}", describe_code(*r).0);
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

    #[test]
    fn escapes_markup_and_controls() {
        assert_eq!(
            esc("<evil>&\"x\"'\u{1b}"),
            "&lt;evil&gt;&amp;&quot;x&quot;&#39;\u{FFFD}"
        );
    }
}
