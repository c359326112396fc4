//! The field pattern next to a reproduction's: periods, codes, counts, spread, and whether the
//! reproduction shows what the field showed.
//!
//! A reproduction runs one scenario, which reproduces one finding; so the verdict is per field
//! finding ("reproduced" or not), and the reproduction *matches* when it reproduces at least one
//! field finding and shows no kind of finding the field does not have.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::diagnose::{HubDiagnosis, Pattern};
use crate::time::human;

/// One line of the side-by-side table.
#[derive(Debug, Clone)]
pub struct Row {
    pub finding: String,
    pub what: String,
    pub field: String,
    pub reproduction: String,
    pub ok: bool,
}

/// The comparison.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub rows: Vec<Row>,
    /// Field findings (slug) and whether the reproduction shows them.
    pub reproduced: Vec<(String, bool)>,
    /// Kinds of findings in the reproduction that the field does not have.
    pub extra: Vec<String>,
}

impl Comparison {
    pub fn matches(&self) -> bool {
        self.reproduced.iter().any(|(_, ok)| *ok) && self.extra.is_empty()
    }
}

fn within(a: i64, b: i64, abs: i64, rel_pct: i64) -> bool {
    (a - b).abs() <= abs.max(a.abs().max(b.abs()) * rel_pct / 100)
}

fn codes(m: &BTreeMap<u32, usize>) -> String {
    if m.is_empty() {
        "none".into()
    } else {
        m.iter()
            .map(|(c, n)| format!("{c}×{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn classes(m: &BTreeMap<u32, usize>) -> Vec<u32> {
    let mut v: Vec<u32> = m.keys().map(|c| c / 1000).collect();
    v.dedup();
    v
}

/// Compare every finding of the field hubs with the reproduction's findings.
pub fn compare(field: &[HubDiagnosis], repro: &[HubDiagnosis]) -> Comparison {
    let repro_findings: Vec<&crate::Finding> = repro.iter().flat_map(|h| &h.findings).collect();
    let field_findings: Vec<&crate::Finding> = field.iter().flat_map(|h| &h.findings).collect();
    let mut rows = Vec::new();
    let mut reproduced = Vec::new();
    for f in &field_findings {
        let slug = f.pattern.slug();
        let counterpart = repro_findings.iter().find(|r| r.pattern.slug() == slug);
        let mut mine: Vec<Row> = Vec::new();
        let mut row = |what: &str, a: String, b: String, ok: bool| {
            mine.push(Row {
                finding: f.title.clone(),
                what: what.to_owned(),
                field: a,
                reproduction: b,
                ok,
            })
        };
        match counterpart.map(|r| (&f.pattern, &r.pattern)) {
            None => row("finding", f.title.clone(), "not seen".into(), false),
            Some((
                Pattern::TokenExpiry {
                    period_ms: a,
                    with_401003: a4,
                    drops: ad,
                    ..
                },
                Pattern::TokenExpiry {
                    period_ms: b,
                    with_401003: b4,
                    drops: bd,
                    ..
                },
            )) => {
                row("period", human(*a), human(*b), within(*a, *b, 120_000, 3));
                // Informational: fakehub always logs 401003 at expiry; the field may not.
                row(
                    "401003 before the drop",
                    format!("{a4} of {ad}"),
                    format!("{b4} of {bd}"),
                    true,
                );
            }
            Some((
                Pattern::IdleTimeout { session_ms: a, .. },
                Pattern::IdleTimeout { session_ms: b, .. },
            )) => {
                row(
                    "idle before the drop",
                    human(*a),
                    human(*b),
                    within(*a, *b, 60_000, 3),
                );
            }
            Some((
                Pattern::Periodic { period_ms: a, .. },
                Pattern::Periodic { period_ms: b, .. },
            )) => {
                row("period", human(*a), human(*b), within(*a, *b, 120_000, 5));
            }
            Some((
                Pattern::RandomDrops {
                    drops: a,
                    not_reconnected: an,
                    ..
                },
                Pattern::RandomDrops {
                    drops: b,
                    not_reconnected: bn,
                    ..
                },
            )) => {
                row(
                    "drops (404104, no period)",
                    a.to_string(),
                    b.to_string(),
                    *b > 0,
                );
                row(
                    "drops never followed by a reconnect",
                    an.to_string(),
                    bn.to_string(),
                    (*an > 0) == (*bn > 0),
                );
            }
            Some((
                Pattern::AuthLoop {
                    recovered: ar,
                    median_gap_ms: ag,
                    ..
                },
                Pattern::AuthLoop {
                    recovered: br,
                    median_gap_ms: bg,
                    ..
                },
            )) => {
                row("median gap between refusals", human(*ag), human(*bg), true);
                row("recovered", ar.to_string(), br.to_string(), ar == br);
            }
            Some((
                Pattern::ReconnectStorm {
                    median_gap_ms: ag,
                    codes: ac,
                    ..
                },
                Pattern::ReconnectStorm {
                    median_gap_ms: bg,
                    codes: bc,
                    ..
                },
            )) => {
                row("median retry gap", human(*ag), human(*bg), *bg < 1000);
                row("codes", codes(ac), codes(bc), classes(ac) == classes(bc));
            }
            Some((
                Pattern::HubErrors {
                    codes: ac,
                    span_ms: a,
                    ..
                },
                Pattern::HubErrors {
                    codes: bc,
                    span_ms: b,
                    ..
                },
            )) => {
                row("codes", codes(ac), codes(bc), classes(ac) == classes(bc));
                row(
                    "refused for",
                    human(*a),
                    human(*b),
                    within(*a, *b, 60_000, 30),
                );
            }
            Some((
                Pattern::FleetBurst {
                    dropped: ad,
                    fleet: af,
                    connect_codes: ac,
                    outage_ms: ao,
                    spread_ms: asp,
                    peak_per_second: ap,
                    back: ab,
                    ..
                },
                Pattern::FleetBurst {
                    dropped: bd,
                    fleet: bf,
                    connect_codes: bc,
                    outage_ms: bo,
                    spread_ms: bsp,
                    peak_per_second: bp,
                    back: bb,
                    ..
                },
            )) => {
                let share = |d: usize, f: usize| d as f64 * 100.0 / f.max(1) as f64;
                row(
                    "share of the fleet dropped",
                    format!("{ad} of {af} ({:.0} %)", share(*ad, *af)),
                    format!("{bd} of {bf} ({:.0} %)", share(*bd, *bf)),
                    (share(*ad, *af) - share(*bd, *bf)).abs() <= 25.0,
                );
                row(
                    "refused connects",
                    codes(ac),
                    codes(bc),
                    classes(ac) == classes(bc),
                );
                row(
                    "outage",
                    human(*ao),
                    human(*bo),
                    within(*ao, *bo, 60_000, 30),
                );
                let lock = |p: usize, b: usize| b >= 3 && p * 2 >= b;
                row(
                    "reconnect spread",
                    format!("{} (peak {ap}/s of {ab})", human(*asp)),
                    format!("{} (peak {bp}/s of {bb})", human(*bsp)),
                    lock(*ap, *ab) == lock(*bp, *bb),
                );
            }
            Some((Pattern::Takeover { count: a, .. }, Pattern::Takeover { count: b, .. })) => {
                row("400027", a.to_string(), b.to_string(), *b > 0);
            }
            Some((
                Pattern::Throttling { codes: ac, .. },
                Pattern::Throttling { codes: bc, .. },
            )) => {
                row(
                    "codes",
                    codes(ac),
                    codes(bc),
                    *bc.keys().next().unwrap_or(&0) / 1000 == 429,
                );
            }
            Some(_) => row("finding", f.title.clone(), "different kind".into(), false),
        }
        let ok = mine.iter().all(|r| r.ok);
        reproduced.push((slug.to_owned(), ok));
        rows.extend(mine);
    }
    let mut extra: Vec<String> = repro_findings
        .iter()
        .map(|r| r.pattern.slug())
        .filter(|s| !field_findings.iter().any(|f| f.pattern.slug() == *s))
        .map(str::to_owned)
        .collect();
    extra.dedup();
    Comparison {
        rows,
        reproduced,
        extra,
    }
}

/// The side-by-side table as printed.
pub fn render(c: &Comparison) -> String {
    let mut out = String::new();
    let w = c
        .rows
        .iter()
        .map(|r| r.what.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let fw = c
        .rows
        .iter()
        .map(|r| r.field.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut last = String::new();
    for r in &c.rows {
        if r.finding != last {
            let _ = writeln!(out, "{}", r.finding);
            last = r.finding.clone();
        }
        let _ = writeln!(
            out,
            "  {} {:w$}  field: {:fw$}  reproduction: {}",
            if r.ok { "✓" } else { "✗" },
            r.what,
            r.field,
            r.reproduction
        );
    }
    for e in &c.extra {
        let _ = writeln!(
            out,
            "✗ the reproduction shows a {e} finding the field does not have"
        );
    }
    let n = c.reproduced.iter().filter(|(_, ok)| *ok).count();
    let _ = writeln!(
        out,
        "\n{}: {n} of {} field findings reproduced{}",
        if c.matches() { "MATCH" } else { "NO MATCH" },
        c.reproduced.len(),
        if c.extra.is_empty() {
            ""
        } else {
            ", with findings the field does not have"
        }
    );
    out
}
