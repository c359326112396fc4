//! The diagnosis as text (printed), Markdown (`diagnosis.md`) and HTML (`diagnosis.html`, in the
//! style of the run report: a timeline per device of the field records).

use std::fmt::Write as _;

use crate::diagnose::{DeviceView, HubDiagnosis};
use crate::import::Import;
use crate::scenario::Written;
use crate::time::{format, human};

macro_rules! put {
    ($out:expr, $($arg:tt)*) => {
        let _ = write!($out, $($arg)*);
    };
}

fn hub_label(h: &HubDiagnosis) -> &str {
    if h.hub.is_empty() {
        "(unnamed hub)"
    } else {
        &h.hub
    }
}

fn evidence_list(f: &crate::Finding, max: usize) -> String {
    let shown: Vec<String> = f.evidence.iter().take(max).map(|s| s.to_string()).collect();
    let more = f.evidence.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} … and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// What the import read, in a few lines.
pub fn import_summary(import: &Import) -> String {
    let mut out = String::new();
    for f in &import.files {
        put!(
            out,
            "{}: {} — {} Connections records{}\n",
            f.path.display(),
            f.shape.describe(),
            f.records,
            if f.skipped > 0 {
                format!(", {} others skipped", f.skipped)
            } else {
                String::new()
            }
        );
    }
    if import.duplicates > 0 {
        put!(out, "{} duplicate records dropped\n", import.duplicates);
    }
    if !import.skipped.is_empty() {
        let s: Vec<String> = import
            .skipped
            .iter()
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect();
        put!(out, "skipped: {}\n", s.join(", "));
    }
    out
}

/// The diagnosis as printed.
pub fn text(hubs: &[HubDiagnosis], written: &[(usize, Written)]) -> String {
    let mut out = String::new();
    for (hi, h) in hubs.iter().enumerate() {
        put!(
            out,
            "\nhub {} — {} records, {} devices, {} to {}\n",
            hub_label(h),
            h.records,
            h.devices.len(),
            format(h.first),
            format(h.last)
        );
        if h.findings.is_empty() {
            put!(
                out,
                "  no 404104 pattern: no drops, refusals, takeovers or throttling\n"
            );
        }
        for (fi, f) in h.findings.iter().enumerate() {
            put!(out, "  [{}] {}\n", fi + 1, f.title);
            for d in &f.details {
                put!(out, "      {d}\n");
            }
            put!(out, "      matches: {}\n", f.cause);
            put!(out, "      cannot tell apart: {}\n", f.cannot_tell);
            put!(out, "      records: {}\n", evidence_list(f, 8));
            if let Some((_, w)) = written.iter().filter(|(i, _)| *i == hi).nth(fi) {
                match w.bug {
                    Some(b) => {
                        put!(
                            out,
                            "      scenario: {} (fails with --sample-bug {b})\n",
                            w.file_name
                        );
                    }
                    None => {
                        put!(out, "      scenario: {}\n", w.file_name);
                    }
                }
            }
        }
    }
    out
}

/// `diagnosis.md`.
pub fn markdown(import: &Import, hubs: &[HubDiagnosis], written: &[(usize, Written)]) -> String {
    let mut out = String::from("# Field diagnosis\n\n");
    put!(out, "## Input\n\n");
    for f in &import.files {
        put!(
            out,
            "- `{}`: {} — {} Connections records{}\n",
            f.path.display(),
            f.shape.describe(),
            f.records,
            if f.skipped > 0 {
                format!(", {} of other categories skipped", f.skipped)
            } else {
                String::new()
            }
        );
    }
    if import.duplicates > 0 {
        put!(out, "- {} duplicate records dropped\n", import.duplicates);
    }
    for (hi, h) in hubs.iter().enumerate() {
        put!(
            out,
            "\n## Hub {}\n\n{} records, {} devices, {} to {} ({}).\n\n",
            hub_label(h),
            h.records,
            h.devices.len(),
            format(h.first),
            format(h.last),
            human(h.last - h.first)
        );
        if h.findings.is_empty() {
            put!(
                out,
                "No 404104 pattern: no drops, refusals, takeovers or throttling.\n\n"
            );
        }
        let mine: Vec<&Written> = written
            .iter()
            .filter(|(i, _)| *i == hi)
            .map(|(_, w)| w)
            .collect();
        for (fi, f) in h.findings.iter().enumerate() {
            put!(out, "### {}. {}\n\n", fi + 1, f.title);
            for d in &f.details {
                put!(out, "- {d}\n");
            }
            put!(out, "- **Matches:** {}\n", f.cause);
            put!(out, "- **The log cannot tell apart:** {}\n", f.cannot_tell);
            let ids: Vec<&str> = f.devices.iter().take(10).map(String::as_str).collect();
            put!(
                out,
                "- **Devices ({}):** {}{}\n",
                f.devices.len(),
                ids.join(", "),
                if f.devices.len() > 10 { ", …" } else { "" }
            );
            if !f.sdks.is_empty() {
                put!(out, "- **sdkVersion:** {}\n", f.sdks.join(", "));
            }
            put!(out, "- **Records:** {}\n", evidence_list(f, 40));
            if let Some(w) = mine.get(fi) {
                put!(out, "- **Scenario:** `{}`", w.file_name);
                match w.bug {
                    Some(b) => {
                        put!(out, " — `fakehub run {} --sample-bug {b}` fails, the well-behaved device passes\n", w.file_name);
                    }
                    None => {
                        put!(out, " — no sample-device bug has this defect\n");
                    }
                }
                for n in &w.notes {
                    put!(out, "  - simplified: {n}\n");
                }
            }
            out.push('\n');
        }
        put!(out, "| device | sdkVersion | connects | drops | refused | graceful |\n|---|---|---|---|---|---|\n");
        for d in h.devices.iter().take(200) {
            put!(
                out,
                "| {} | {} | {} | {} | {} | {} |\n",
                md_cell(&d.id),
                md_cell(&d.sdk.iter().cloned().collect::<Vec<_>>().join(", ")),
                d.connects.len(),
                d.drops.len(),
                d.failures.len(),
                d.graceful.len()
            );
        }
        if h.devices.len() > 200 {
            put!(out, "\n({} more devices)\n", h.devices.len() - 200);
        }
    }
    out
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const CSS: &str = "\
body{margin:20px 24px;font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:#212529;background:#fff}\
h1{font-size:22px;margin:0}h2{font-size:16px;margin:18px 0 6px}h3{font-size:14px;margin:14px 0 4px}\
.facts{color:#495057;margin:6px 0}\
.finding{border-left:3px solid #e8590c;padding:2px 10px;margin:8px 0;background:#fff9f4}\
.finding ul{margin:4px 0;padding-left:18px}\
.ev{font:12px ui-monospace,'DejaVu Sans Mono',monospace;color:#495057}\
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;font-size:12px;color:#495057;margin:4px 0 8px}\
svg.timeline{display:block;max-width:100%;height:auto}\
";

const WIDTH: f64 = 1200.0;
const LEFT: f64 = 170.0;
const ROW: f64 = 18.0;

fn code_color(codes: &[u32]) -> &'static str {
    if codes.contains(&401003) {
        "#f08c00"
    } else if codes.contains(&400027) {
        "#9c36b5"
    } else if codes.iter().any(|c| (429000..430000).contains(c)) {
        "#1971c2"
    } else if codes.iter().any(|c| (500000..600000).contains(c)) {
        "#c92a2a"
    } else {
        "#e03131"
    }
}

fn timeline(out: &mut String, h: &HubDiagnosis) {
    let span = (h.last - h.first).max(1) as f64;
    let x = |t: i64| LEFT + (t - h.first) as f64 / span * (WIDTH - LEFT - 10.0);
    // Devices with findings first, then the rest, at most 40 rows.
    let flagged: std::collections::BTreeSet<&str> = h
        .findings
        .iter()
        .flat_map(|f| f.devices.iter().map(String::as_str))
        .collect();
    let mut rows: Vec<&DeviceView> = h
        .devices
        .iter()
        .filter(|d| flagged.contains(d.id.as_str()))
        .collect();
    rows.extend(
        h.devices
            .iter()
            .filter(|d| !flagged.contains(d.id.as_str())),
    );
    let shown = rows.len().min(40);
    let height = 24.0 + shown as f64 * ROW;
    put!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"timeline\" width=\"{WIDTH}\" height=\"{height:.0}\" viewBox=\"0 0 {WIDTH} {height:.0}\" font-family=\"system-ui,'DejaVu Sans',sans-serif\" font-size=\"11\">\n"
    );
    put!(
        out,
        "<text x=\"{LEFT}\" y=\"12\" fill=\"#868e96\">{}</text><text x=\"{}\" y=\"12\" text-anchor=\"end\" fill=\"#868e96\">{}</text>\n",
        esc(&format(h.first)),
        WIDTH - 10.0,
        esc(&format(h.last))
    );
    for (i, d) in rows.iter().take(shown).enumerate() {
        let y = 20.0 + i as f64 * ROW;
        put!(
            out,
            "<g class=\"row\" data-device=\"{}\"><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-family=\"ui-monospace,'DejaVu Sans Mono',monospace\">{}</text>",
            esc(&d.id),
            LEFT - 6.0,
            y + 11.0,
            esc(&d.id.chars().take(24).collect::<String>())
        );
        // Connected spans: from a connect to the next drop or graceful disconnect.
        let mut ends: Vec<i64> = d
            .drops
            .iter()
            .map(|x| x.at)
            .chain(d.graceful.iter().map(|g| g.0))
            .collect();
        ends.sort_unstable();
        for (c, src) in &d.connects {
            let end = ends.iter().find(|&&e| e >= *c).copied().unwrap_or(h.last);
            put!(
                out,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"10\" fill=\"#b2f2bb\"><title>connected {} → {} ({})</title></rect>",
                x(*c),
                y + 3.0,
                (x(end) - x(*c)).max(1.0),
                esc(&format(*c)),
                esc(&format(end)),
                esc(&src.to_string())
            );
        }
        for dr in &d.drops {
            let codes: Vec<String> = dr.codes.iter().map(u32::to_string).collect();
            put!(
                out,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"2\" height=\"14\" fill=\"{}\"><title>{} drop {} ({})</title></rect>",
                x(dr.at) - 1.0,
                y + 1.0,
                code_color(&dr.codes),
                esc(&format(dr.at)),
                codes.join("+"),
                esc(&dr.sources.first().map(|s| s.to_string()).unwrap_or_default())
            );
        }
        for f in &d.failures {
            put!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"none\" stroke=\"{}\"><title>{} refused {} ({})</title></circle>",
                x(f.at),
                y + 8.0,
                code_color(&f.code.into_iter().collect::<Vec<_>>()),
                esc(&format(f.at)),
                f.code.map(|c| c.to_string()).unwrap_or_default(),
                esc(&f.source.to_string())
            );
        }
        for (g, src) in &d.graceful {
            put!(
                out,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"2\" height=\"14\" fill=\"#2f9e44\"><title>{} DISCONNECT ({})</title></rect>",
                x(*g) - 1.0,
                y + 1.0,
                esc(&format(*g)),
                esc(&src.to_string())
            );
        }
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n");
    if rows.len() > shown {
        put!(
            out,
            "<p class=\"facts\">{} more devices not drawn.</p>\n",
            rows.len() - shown
        );
    }
}

/// `diagnosis.html`: the findings and a per-device timeline of the field records.
pub fn html(import: &Import, hubs: &[HubDiagnosis], written: &[(usize, Written)]) -> String {
    let mut out = String::new();
    put!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Field diagnosis — fakehub</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>Field diagnosis</h1>\n"
    );
    put!(out, "<p class=\"facts\">");
    for f in &import.files {
        put!(
            out,
            "{} ({}, {} records)<br>",
            esc(&f.path.display().to_string()),
            esc(f.shape.describe()),
            f.records
        );
    }
    put!(out, "</p>\n");
    put!(
        out,
        "<div class=\"legend\"><span style=\"color:#2f9e44\">■ connected / DISCONNECT</span><span style=\"color:#f08c00\">▮ 401003 + 404104</span><span style=\"color:#e03131\">▮ 404104</span><span style=\"color:#c92a2a\">○ 500xxx</span><span style=\"color:#9c36b5\">▮ 400027</span><span style=\"color:#1971c2\">▮ 429xxx</span></div>\n"
    );
    for (hi, h) in hubs.iter().enumerate() {
        put!(
            out,
            "<h2>Hub {}</h2>\n<p class=\"facts\">{} records, {} devices, {} to {}</p>\n",
            esc(hub_label(h)),
            h.records,
            h.devices.len(),
            esc(&format(h.first)),
            esc(&format(h.last))
        );
        let mine: Vec<&Written> = written
            .iter()
            .filter(|(i, _)| *i == hi)
            .map(|(_, w)| w)
            .collect();
        for (fi, f) in h.findings.iter().enumerate() {
            put!(
                out,
                "<div class=\"finding\"><h3>{}. {}</h3><ul>",
                fi + 1,
                esc(&f.title)
            );
            for d in &f.details {
                put!(out, "<li>{}</li>", esc(d));
            }
            put!(out, "<li><b>Matches:</b> {}</li>", esc(f.cause));
            put!(
                out,
                "<li><b>Cannot tell apart:</b> {}</li>",
                esc(f.cannot_tell)
            );
            if let Some(w) = mine.get(fi) {
                put!(
                    out,
                    "<li><b>Scenario:</b> <code>{}</code>{}</li>",
                    esc(&w.file_name),
                    w.bug
                        .map(|b| format!(" (fails with <code>--sample-bug {}</code>)", esc(b)))
                        .unwrap_or_default()
                );
            }
            put!(
                out,
                "</ul><div class=\"ev\">{}</div></div>\n",
                esc(&evidence_list(f, 20))
            );
        }
        timeline(&mut out, h);
    }
    out.push_str("</body>\n</html>\n");
    out
}
