//! The Connections records rule: how many records with a result code, and when.

use std::time::Duration;

use super::{secs, since, Verdict};
use crate::log::{fmt_offset, Log};

/// A check on the Connections records.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecordRule {
    pub code: Option<u32>,
    /// One device's records; `None`: every device's together (the fleet's).
    pub device: Option<String>,
    pub count: Option<usize>,
    pub min: Option<usize>,
    pub max: Option<usize>,
    /// Every matching record within this window of the log's start: (at, tolerance).
    pub at: Option<(Duration, Duration)>,
}

/// Count Connections records with a result code (and device), and check when they happened.
pub fn records(log: &Log, rule: &RecordRule) -> Verdict {
    let matching: Vec<&fakehub::Event> = log
        .record_codes()
        .filter(|(_, code)| rule.code.is_none_or(|c| code.map(|x| x.code()) == Some(c)))
        .filter(|(e, _)| {
            rule.device
                .as_deref()
                .is_none_or(|d| e.device.as_deref().unwrap_or_default() == d)
        })
        .map(|(e, _)| e)
        .collect();
    let n = matching.len();
    let what = format!(
        "{} records{}",
        rule.code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "all".into()),
        rule.device
            .as_deref()
            .map(|d| format!(" of {d}"))
            .unwrap_or_default()
    );
    let times: Vec<String> = matching.iter().take(8).map(|e| log.at(e.time)).collect();
    let summary = format!("{n} {what} at {times:?}");
    let bad_count = rule.count.is_some_and(|c| c != n)
        || rule.min.is_some_and(|m| n < m)
        || rule.max.is_some_and(|m| n > m);
    if bad_count {
        let expected = match (rule.count, rule.min, rule.max) {
            (Some(c), ..) => format!("expected {c}"),
            (None, Some(a), Some(b)) => format!("expected {a}–{b}"),
            (None, Some(a), None) => format!("expected at least {a}"),
            (None, None, Some(b)) => format!("expected at most {b}"),
            _ => String::new(),
        };
        return Verdict::fail(
            "records",
            rule.device.as_deref(),
            format!("{summary}; {expected}"),
            log,
            None,
        );
    }
    if let Some((at, tol)) = rule.at {
        for e in &matching {
            let t = since(log.start(), e.time);
            if t.abs_diff(at) > tol {
                return Verdict::fail(
                    "records",
                    rule.device.as_deref(),
                    format!(
                        "{summary}; one is at {}, expected {} ± {}",
                        fmt_offset(t),
                        fmt_offset(at),
                        secs(tol)
                    ),
                    log,
                    None,
                );
            }
        }
    }
    Verdict::pass("records", rule.device.as_deref(), summary)
}
