//! Service-side rules: what the back end asked of the device — direct methods answered, C2D
//! messages completed, desired properties applied — judged from the hub's side of each request.

use std::time::{Duration, SystemTime};

use fakehub::{EventKind, TwinSection};

use super::{end_of, secs, since, Verdict};
use crate::log::Log;

/// Every direct method call `name` (any name when `None`) made to the device was answered with
/// `status` within `within` (a call the device could not take — 404103 not online — or did not
/// answer in time — 504101 — fails).
pub fn method(
    log: &Log,
    device: &str,
    name: Option<&str>,
    status: i32,
    within: Duration,
) -> Verdict {
    let calls: Vec<_> = log
        .of_device(device)
        .filter_map(|e| match &e.kind {
            EventKind::MethodResult {
                name: n,
                status: s,
                result,
                duration_ms,
                ..
            } if name.is_none_or(|want| want == n) => Some((
                e,
                n.clone(),
                *s,
                *result,
                Duration::from_millis(*duration_ms),
            )),
            _ => None,
        })
        .collect();
    let what = name.map_or("direct method".to_owned(), |n| format!("method `{n}`"));
    if calls.is_empty() {
        return Verdict::cannot_judge(
            "method",
            Some(device),
            format!("no {what} was invoked on it"),
        );
    }
    let mut slowest = Duration::ZERO;
    for (e, n, s, result, took) in &calls {
        let invoked = log.at(e.time.checked_sub(*took).unwrap_or(e.time));
        let bad = match (s, result) {
            (_, Some(code)) => Some(format!(
                "`{n}` invoked at {invoked} ended with {code} after {}",
                secs(*took)
            )),
            (Some(s), None) if *s != status => Some(format!(
                "`{n}` invoked at {invoked} was answered with status {s} (expected {status})"
            )),
            (Some(_), None) if *took > within => Some(format!(
                "`{n}` invoked at {invoked} was answered after {} (limit {})",
                secs(*took),
                secs(within)
            )),
            (None, None) => Some(format!("`{n}` invoked at {invoked} has no answer")),
            _ => None,
        };
        if let Some(why) = bad {
            return Verdict::fail("method", Some(device), why, log, Some(e.seq));
        }
        slowest = slowest.max(*took);
    }
    Verdict::pass(
        "method",
        Some(device),
        format!(
            "{} {what} calls answered with {status} (slowest {})",
            calls.len(),
            secs(slowest)
        ),
    )
}

/// A request of the service side: what it was (for people), when it was made, and when the device
/// completed it, if it did.
struct Request {
    what: String,
    at: SystemTime,
    seq: u64,
    done: Option<SystemTime>,
}

/// Each request completed within `within`: the completion times, or the verdict of the first that
/// was late, never completed, or made too near the end of the log to tell. `completed` says what
/// completing is, for people.
fn each_in_time(
    rule: &str,
    device: &str,
    log: &Log,
    (requests, completed): (&[Request], &str),
    within: Duration,
) -> Result<Vec<Duration>, Verdict> {
    let (end, _) = end_of(log);
    let mut took = Vec::with_capacity(requests.len());
    for r in requests {
        let what = &r.what;
        let at = log.at(r.at);
        match r.done.map(|t| since(r.at, t)) {
            Some(d) if d <= within => took.push(d),
            Some(d) => {
                return Err(Verdict::fail(
                    rule,
                    Some(device),
                    format!(
                        "{what} (at {at}) was {completed} only {} later (limit {})",
                        secs(d),
                        secs(within)
                    ),
                    log,
                    Some(r.seq),
                ))
            }
            None if since(r.at, end) < within => {
                return Err(Verdict::cannot_judge(
                    rule,
                    Some(device),
                    format!(
                        "{what} came at {at}, {} before the run ended: too late to judge a {} completion",
                        secs(since(r.at, end)),
                        secs(within)
                    ),
                ))
            }
            None => {
                return Err(Verdict::fail(
                    rule,
                    Some(device),
                    format!("{what} (at {at}) was never {completed}"),
                    log,
                    Some(r.seq),
                ))
            }
        }
    }
    Ok(took)
}

/// Every cloud-to-device message queued for the device was completed (its PUBACK) within
/// `within` of being queued, and at least `count` were.
pub fn c2d_delivered(log: &Log, device: &str, count: Option<usize>, within: Duration) -> Verdict {
    let rule = "c2d_delivered";
    let mut completed: Vec<(&str, SystemTime)> = Vec::new();
    let mut queued: Vec<(&str, SystemTime, u64)> = Vec::new();
    for e in log.of_device(device) {
        match &e.kind {
            EventKind::C2dQueued { message_id, .. } => queued.push((message_id, e.time, e.seq)),
            EventKind::C2dCompleted { message_id } => completed.push((message_id, e.time)),
            _ => {}
        }
    }
    if queued.is_empty() {
        return Verdict::cannot_judge(
            rule,
            Some(device),
            "no cloud-to-device message was sent to it".into(),
        );
    }
    let requests: Vec<Request> = queued
        .iter()
        .map(|(id, at, seq)| Request {
            what: format!("the message `{id}`"),
            at: *at,
            seq: *seq,
            done: completed
                .iter()
                .find(|(c, t)| c == id && t >= at)
                .map(|(_, t)| *t),
        })
        .collect();
    let completed = "completed (PUBACK)";
    let took = match each_in_time(rule, device, log, (&requests, completed), within) {
        Ok(t) => t,
        Err(v) => return v,
    };
    if let Some(n) = count.filter(|n| took.len() < *n) {
        return Verdict::fail(
            rule,
            Some(device),
            format!("{} messages delivered, expected at least {n}", took.len()),
            log,
            requests.last().map(|r| r.seq),
        );
    }
    Verdict::pass(
        rule,
        Some(device),
        format!(
            "{} messages completed, each within {} (slowest {})",
            took.len(),
            secs(within),
            secs(took.iter().copied().max().unwrap_or_default())
        ),
    )
}

/// Every desired-properties update was applied by the device within `within`: a later patch of its
/// reported properties acknowledges the desired `$version` (IoT Plug and Play's writable-property
/// acknowledgement, `{"prop": {"value": …, "ac": 200, "av": <desired $version>}}`).
pub fn desired_applied(log: &Log, device: &str, within: Duration) -> Verdict {
    let rule = "desired_applied";
    let mut updates: Vec<(u64, SystemTime, u64)> = Vec::new();
    let mut acks: Vec<(u64, SystemTime)> = Vec::new();
    for e in log.of_device(device) {
        if let EventKind::TwinUpdated {
            section,
            version,
            acknowledges,
        } = &e.kind
        {
            match section {
                TwinSection::Desired => updates.push((*version, e.time, e.seq)),
                TwinSection::Reported => {
                    if let Some(av) = acknowledges {
                        acks.push((*av, e.time));
                    }
                }
            }
        }
    }
    if updates.is_empty() {
        return Verdict::cannot_judge(
            rule,
            Some(device),
            "its desired properties were never updated".into(),
        );
    }
    let requests: Vec<Request> = updates
        .iter()
        .map(|(version, at, seq)| Request {
            what: format!("desired $version {version}"),
            at: *at,
            seq: *seq,
            // Acknowledging a later version acknowledges this one too.
            done: acks
                .iter()
                .find(|(av, t)| av >= version && t >= at)
                .map(|(_, t)| *t),
        })
        .collect();
    let completed = "acknowledged in the reported properties";
    match each_in_time(rule, device, log, (&requests, completed), within) {
        Ok(took) => Verdict::pass(
            rule,
            Some(device),
            format!(
                "{} desired updates acknowledged in the reported properties, each within {} (slowest {})",
                took.len(),
                secs(within),
                secs(took.iter().copied().max().unwrap_or_default())
            ),
        ),
        Err(v) => v,
    }
}
