//! Provisioning rules: the device gets provisioned (registered with the Device Provisioning
//! Service, assigned a hub, connected to it), it waits as long as the service's `retry-after`
//! asks, and it registers again when its hub keeps failing it.
//!
//! They read the DPS events (`dps_request`, `dps_response`: the device is its registration id)
//! and the device's hub connections (the lifecycle fold).

use std::time::{Duration, SystemTime};

use fakehub::events::DpsOp;
use fakehub::EventKind;

use super::{end_of, process_note, secs, since, Verdict};
use crate::log::Log;

/// What the device asked of DPS and what it was answered, in order.
#[derive(Debug, Clone)]
enum Step {
    Register {
        at: SystemTime,
        seq: u64,
    },
    Request {
        at: SystemTime,
    },
    Answer {
        at: SystemTime,
        seq: u64,
        status: u16,
        retry_after: Option<u32>,
        registration: Option<String>,
        hub: Option<String>,
        message: Option<String>,
    },
    /// A hub connection attempt: whether it connected, and (several hubs) on which hub.
    Connect {
        at: SystemTime,
        seq: u64,
        ok: bool,
        hub: Option<String>,
    },
}

fn steps(log: &Log, device: &str) -> Vec<Step> {
    let mut out: Vec<(u64, Step)> = Vec::new();
    for e in log.of_device(device) {
        match &e.kind {
            EventKind::DpsRequest { op, .. } => {
                out.push((e.seq, Step::Request { at: e.time }));
                if *op == DpsOp::Register {
                    out.push((
                        e.seq,
                        Step::Register {
                            at: e.time,
                            seq: e.seq,
                        },
                    ));
                }
            }
            EventKind::DpsResponse(r) => out.push((
                e.seq,
                Step::Answer {
                    at: e.time,
                    seq: e.seq,
                    status: r.status,
                    retry_after: r.retry_after,
                    registration: r.registration.clone(),
                    hub: r.hub_name.clone(),
                    message: r.message.clone(),
                },
            )),
            _ => {}
        }
    }
    for c in log.lifecycle().of_device(device) {
        let Some(connect) = &c.connect else { continue };
        // Attempts still open at the end of the log are not judged either way.
        if c.connack.is_none() && c.closed.is_none() {
            continue;
        }
        let hub = connect.hub.as_deref().map(str::to_owned);
        out.push((
            connect.at.seq,
            Step::Connect {
                at: connect.at.time,
                seq: connect.at.seq,
                ok: c.connected(),
                hub,
            },
        ));
    }
    out.sort_by_key(|(seq, _)| *seq);
    out.into_iter().map(|(_, s)| s).collect()
}

/// What an answer said, for people.
fn said(status: u16, registration: Option<&str>, message: Option<&str>) -> String {
    match (status, registration, message) {
        (_, Some(r), Some(m)) if r != "assigned" && r != "assigning" => {
            format!("{status} {r}: {m}")
        }
        (_, Some(r), _) => format!("{status} {r}"),
        (_, None, Some(m)) => format!("{status}: {m}"),
        _ => status.to_string(),
    }
}

/// A provisioning under way: when it started (its first register), the hub it was assigned (when
/// and which), and what DPS last answered.
struct Open {
    start: SystemTime,
    seq: u64,
    assigned: Option<(SystemTime, Option<String>)>,
    last: String,
}

/// Every provisioning of the device — from a register until it is connected to the hub DPS
/// assigned — completes within `within`. Registering again before getting in continues the same
/// provisioning (timed from its first register), to the hub assigned last.
pub fn provisions(log: &Log, device: &str, within: Duration) -> Verdict {
    let rule = "provisions";
    let (end, _) = end_of(log);
    let mut done: Vec<Duration> = Vec::new();
    let mut open: Option<Open> = None;
    let late = |start: SystemTime, seq: u64, why: String| {
        Verdict::fail(
            rule,
            Some(device),
            format!(
                "{why} (registered at {}; limit {}){}",
                log.at(start),
                secs(within),
                process_note(log, device, start)
            ),
            log,
            Some(seq),
        )
    };
    for step in steps(log, device) {
        match step {
            Step::Register { at, seq } => {
                if open.is_none() {
                    open = Some(Open {
                        start: at,
                        seq,
                        assigned: None,
                        last: "no answer".into(),
                    });
                }
            }
            Step::Answer {
                at,
                status,
                registration,
                hub,
                message,
                ..
            } => {
                if let Some(o) = open.as_mut() {
                    o.last = said(status, registration.as_deref(), message.as_deref());
                    // A device that registers again before it got in (its hub kept refusing it)
                    // goes on with the same provisioning, to the hub it was assigned last.
                    if registration.as_deref() == Some("assigned") {
                        o.assigned = Some((at, hub));
                    }
                }
            }
            Step::Connect { at, ok, hub, .. } => {
                let Some(Open {
                    start,
                    seq,
                    assigned: Some((_, assigned_hub)),
                    ..
                }) = &open
                else {
                    continue;
                };
                let right_hub = match (assigned_hub, &hub) {
                    (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
                    _ => true,
                };
                if ok && right_hub {
                    let took = since(*start, at);
                    if took > within {
                        return late(
                            *start,
                            *seq,
                            format!("provisioned and connected only after {}", secs(took)),
                        );
                    }
                    done.push(took);
                    open = None;
                }
            }
            Step::Request { .. } => {}
        }
    }
    if let Some(Open {
        start,
        seq,
        assigned,
        last,
    }) = open
    {
        let waited = since(start, end);
        if waited < within {
            return Verdict::cannot_judge(
                rule,
                Some(device),
                format!(
                    "it registered at {}, {} before the run ended: too late to judge a {} provisioning",
                    log.at(start),
                    secs(waited),
                    secs(within)
                ),
            );
        }
        let why = match assigned {
            Some((at, _)) => format!("assigned at {} but never connected to its hub", log.at(at)),
            None => format!("never assigned a hub (DPS's last answer: {last})"),
        };
        return late(start, seq, why);
    }
    if done.is_empty() {
        return Verdict::cannot_judge(
            rule,
            Some(device),
            "it never registered with the provisioning service".into(),
        );
    }
    Verdict::pass(
        rule,
        Some(device),
        format!(
            "{} provisionings, each assigned and connected within {} (slowest {})",
            done.len(),
            secs(within),
            secs(done.iter().copied().max().unwrap_or_default())
        ),
    )
}

/// After every answer of DPS that asked it to wait — 429 and 5xx with `retry-after`, and with
/// `polling` also the `retry-after` of 202 `assigning` answers — the device's next request to DPS
/// (on any connection) came no sooner, give or take `tolerance`.
pub fn honours_retry_after(log: &Log, device: &str, polling: bool, tolerance: Duration) -> Verdict {
    let rule = "honours_retry_after";
    let steps = steps(log, device);
    let mut judged = 0usize;
    let mut tightest: Option<(Duration, Duration)> = None;
    for (i, step) in steps.iter().enumerate() {
        let Step::Answer {
            at,
            seq,
            status,
            retry_after: Some(asked),
            ..
        } = step
        else {
            continue;
        };
        if !(*status >= 429 || (polling && *status == 202)) {
            continue;
        }
        let Some(next) = steps[i + 1..].iter().find_map(|s| match s {
            Step::Request { at } => Some(*at),
            _ => None,
        }) else {
            continue;
        };
        judged += 1;
        let asked = Duration::from_secs(u64::from(*asked));
        let waited = since(*at, next);
        if waited + tolerance < asked {
            return Verdict::fail(
                rule,
                Some(device),
                format!(
                    "DPS answered {status} with retry-after {} at {}, and the device asked again {} later",
                    secs(asked),
                    log.at(*at),
                    secs(waited)
                ),
                log,
                Some(*seq),
            );
        }
        if tightest.is_none_or(|(w, a)| waited.saturating_sub(a) < w.saturating_sub(asked)) {
            tightest = Some((waited, asked));
        }
    }
    match tightest {
        None => Verdict::cannot_judge(
            rule,
            Some(device),
            format!(
                "DPS never asked it to wait and then heard from it again (no {}answer with retry-after followed by a request)",
                if polling { "429, 5xx or 202 " } else { "429 or 5xx " }
            ),
        ),
        Some((waited, asked)) => Verdict::pass(
            rule,
            Some(device),
            format!(
                "{judged} retry-after waits honoured (closest: {} after asking for {})",
                secs(waited),
                secs(asked)
            ),
        ),
    }
}

/// When its hub fails it `failures` times in a row (a CONNECT refused or unanswered), the device
/// registers with DPS again before trying the hub once more, and is connected to the hub it is then
/// assigned within `within` of that registration.
pub fn reprovisions_after(log: &Log, device: &str, failures: u32, within: Duration) -> Verdict {
    let rule = "reprovisions_after";
    let (end, _) = end_of(log);
    let failures = failures.max(1);
    let mut streak: u32 = 0;
    let mut streak_start: Option<(SystemTime, u64)> = None;
    let mut pending: Option<(SystemTime, u64)> = None;
    let mut judged: Vec<Duration> = Vec::new();
    for step in steps(log, device) {
        match step {
            Step::Connect { at, seq, ok, .. } if !ok => {
                streak += 1;
                streak_start.get_or_insert((at, seq));
                if streak > failures {
                    let (from, _) = streak_start.unwrap_or((at, seq));
                    return Verdict::fail(
                        rule,
                        Some(device),
                        format!(
                            "its hub refused it {streak} times in a row from {} without it registering with DPS again (expected after at most {failures})",
                            log.at(from)
                        ),
                        log,
                        Some(seq),
                    );
                }
            }
            Step::Connect { at, seq, .. } => {
                if let Some((registered, _)) = pending.take() {
                    let took = since(registered, at);
                    if took > within {
                        return Verdict::fail(
                            rule,
                            Some(device),
                            format!(
                                "it registered again at {} and connected only {} later (limit {})",
                                log.at(registered),
                                secs(took),
                                secs(within)
                            ),
                            log,
                            Some(seq),
                        );
                    }
                    judged.push(took);
                }
                streak = 0;
                streak_start = None;
            }
            Step::Register { at, seq } => {
                if streak >= failures && pending.is_none() {
                    pending = Some((at, seq));
                }
                streak = 0;
                streak_start = None;
            }
            _ => {}
        }
    }
    if let Some((registered, seq)) = pending {
        if since(registered, end) < within {
            return Verdict::cannot_judge(
                rule,
                Some(device),
                format!(
                    "it registered again at {}, too near the end of the run to judge a {} reconnect",
                    log.at(registered),
                    secs(within)
                ),
            );
        }
        return Verdict::fail(
            rule,
            Some(device),
            format!(
                "it registered again at {} but did not connect to a hub within {}",
                log.at(registered),
                secs(within)
            ),
            log,
            Some(seq),
        );
    }
    if judged.is_empty() {
        return Verdict::cannot_judge(
            rule,
            Some(device),
            format!("its hub never refused it {failures} times in a row"),
        );
    }
    Verdict::pass(
        rule,
        Some(device),
        format!(
            "{} times its hub failed it {failures} times in a row; it registered again each time and was connected within {} (slowest {})",
            judged.len(),
            secs(within),
            secs(judged.iter().copied().max().unwrap_or_default())
        ),
    )
}
