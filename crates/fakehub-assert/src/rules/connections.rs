//! Connection rules: connected at the end, recovering from drops, renewing the token, backing off,
//! not hammering, ending gracefully, a sane keep-alive.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use fakehub::events::{Connection, FaultAction};
use fakehub::{CloseCause, EventKind};

use super::{end_of, process_note, secs, since, Verdict};
use crate::log::Log;

/// A connection attempt as these rules read it.
#[derive(Debug, Clone)]
struct Conn {
    connect_seq: u64,
    connect_at: SystemTime,
    keep_alive: u16,
    token_expiry: Option<SystemTime>,
    /// (code, session present, time, result code of a refusal)
    connack: Option<(u8, bool, SystemTime, Option<fakehub::ResultCode>)>,
    /// The first packet the hub answered after CONNACK 0.
    exchanged: Option<SystemTime>,
    closed: Option<(CloseCause, SystemTime, u64)>,
}

impl Conn {
    fn of(c: &Connection) -> Option<Conn> {
        let connect = c.connect.as_ref()?;
        Some(Conn {
            connect_seq: connect.at.seq,
            connect_at: connect.at.time,
            keep_alive: connect.keep_alive,
            token_expiry: connect.token_expiry,
            connack: c
                .connack
                .as_ref()
                .map(|a| (a.code, a.session_present, a.at.time, a.result)),
            exchanged: c.first_exchange.map(|a| a.time),
            closed: c.closed.as_ref().map(|x| (x.cause, x.at.time, x.at.seq)),
        })
    }
}

/// Every connection attempt of a device that got as far as CONNECT, in order.
fn connections(log: &Log, device: &str) -> Vec<Conn> {
    super::connections(log, device)
        .into_iter()
        .filter_map(Conn::of)
        .collect()
}

fn connected_ok(c: &Conn) -> bool {
    matches!(c.connack, Some((0, ..)))
}

/// A hub-side or abrupt end of a connected session (not the device's DISCONNECT, not hub shutdown).
fn drops(conns: &[Conn]) -> Vec<(SystemTime, u64, CloseCause)> {
    conns
        .iter()
        .filter(|c| connected_ok(c))
        .filter_map(|c| c.closed)
        .filter(|(cause, ..)| {
            !matches!(
                cause,
                CloseCause::DeviceDisconnect | CloseCause::HubShutdown
            )
        })
        .map(|(cause, at, seq)| (at, seq, cause))
        .collect()
}

/// The device is connected at the end of the run: at the `timeline_ended` marker when the runner
/// wrote one (it then stops the devices), else at the end of the log.
pub fn connected(log: &Log, device: &str) -> Verdict {
    let (_, end_seq) = end_of(log);
    let conns: Vec<Conn> = connections(log, device)
        .into_iter()
        .filter(|c| c.connect_seq < end_seq)
        .collect();
    let last_ok = conns.iter().rev().find(|c| connected_ok(c));
    match last_ok {
        Some(c) if c.closed.is_none_or(|(_, _, seq)| seq > end_seq) => Verdict::pass(
            "connected",
            Some(device),
            format!("connected since {}", log.at(c.connect_at)),
        ),
        Some(c) => {
            let (cause, at, seq) =
                c.closed
                    .unwrap_or((CloseCause::DeviceClosed, c.connect_at, c.connect_seq));
            Verdict::fail(
                "connected",
                Some(device),
                format!(
                    "not connected at the end: last connection closed at {} ({cause:?}){}",
                    log.at(at),
                    process_note(log, device, c.connect_at)
                ),
                log,
                Some(seq),
            )
        }
        None => Verdict::fail(
            "connected",
            Some(device),
            format!("never connected{}", process_note(log, device, log.start())),
            log,
            conns.last().map(|c| c.connect_seq),
        ),
    }
}

/// Every hub-side or abrupt drop is followed, within `within`, by a CONNACK 0 after which the
/// device really exchanged packets (the hub answered a PUBLISH, SUBSCRIBE or PINGREQ on that
/// connection): a connection inside a blackhole, or one closed before any exchange, is not a
/// recovery. Measured from the drop to that CONNACK. A working connection already up when the
/// drop was recorded counts as a recovery at once: a device that gave up on a stalled connection
/// may reconnect before the hub notices the old one is gone.
pub fn recovers(log: &Log, device: &str, within: Duration) -> Verdict {
    let conns = connections(log, device);
    if !conns.iter().any(|c| matches!(c.connack, Some((0, ..)))) {
        // Nothing to recover from (`connected` judges a device that never got in).
        return Verdict::cannot_judge(
            "recovers",
            Some(device),
            format!(
                "it never connected{}",
                process_note(log, device, log.start())
            ),
        );
    }
    let drops = drops(&conns);
    let (end, _) = end_of(log);
    let mut worst = Duration::ZERO;
    for (at, seq, cause) in &drops {
        // The first working connection after the drop, or one already up when it was recorded
        // (the device reconnected before the hub noticed the old connection was gone).
        let back = conns
            .iter()
            .filter(|c| c.exchanged.is_some())
            .filter(|c| c.closed.is_none_or(|(_, _, s)| s > *seq))
            .filter_map(|c| match c.connack {
                Some((0, _, t, _)) => Some(t.max(*at)),
                _ => None,
            })
            .min();
        match back {
            Some(t) if since(*at, t) <= within => worst = worst.max(since(*at, t)),
            Some(t) => {
                return Verdict::fail(
                    "recovers",
                    Some(device),
                    format!(
                        "the drop at {} ({cause:?}) was followed by a working connection only {} later (limit {})",
                        log.at(*at),
                        secs(since(*at, t)),
                        secs(within)
                    ),
                    log,
                    Some(*seq),
                );
            }
            None if since(*at, end) >= within => {
                let tried = conns.iter().filter(|c| c.connect_at >= *at).count();
                return Verdict::fail(
                    "recovers",
                    Some(device),
                    format!(
                        "the drop at {} ({cause:?}) was never followed by a successful connect that exchanged packets ({} until the end, {tried} attempts){}",
                        log.at(*at),
                        secs(since(*at, end)),
                        process_note(log, device, *at)
                    ),
                    log,
                    Some(*seq),
                );
            }
            None => {
                return Verdict::cannot_judge(
                    "recovers",
                    Some(device),
                    format!(
                        "the run ended {} after the drop at {}: too short to judge a {} recovery",
                        secs(since(*at, end)),
                        log.at(*at),
                        secs(within)
                    ),
                );
            }
        }
    }
    Verdict::pass(
        "recovers",
        Some(device),
        format!(
            "{} drops, each recovered within {} (worst {})",
            drops.len(),
            secs(within),
            secs(worst)
        ),
    )
}

/// The device renews its SAS token before it expires: no expiry drops, no expired-token refusals,
/// and each token-authenticated connection is replaced before its token's `se`. It cannot be judged
/// on a run that ended before the first token expired (a device that never renews would pass), nor
/// for a device that never connected with a SAS token.
pub fn renews_token(log: &Log, device: &str) -> Verdict {
    let conns = connections(log, device);
    let (end, _) = end_of(log);
    let Some(first) = conns.iter().find_map(|c| c.token_expiry) else {
        return Verdict::cannot_judge(
            "renews_token",
            Some(device),
            "it never connected with a SAS token".into(),
        );
    };
    for c in &conns {
        if let Some((CloseCause::TokenExpired, at, seq)) = c.closed {
            return Verdict::fail(
                "renews_token",
                Some(device),
                format!(
                    "the hub dropped it at {} because its token expired (connected at {})",
                    log.at(at),
                    log.at(c.connect_at)
                ),
                log,
                Some(seq),
            );
        }
        if let (Some((code, _, at, Some(fakehub::ResultCode::IoTHubUnauthorized))), Some(se)) =
            (c.connack, c.token_expiry)
        {
            if code != 0 && se < at {
                return Verdict::fail(
                    "renews_token",
                    Some(device),
                    format!(
                        "at {} it connected with a token that had expired at {}",
                        log.at(at),
                        log.at(se)
                    ),
                    log,
                    Some(c.connect_seq),
                );
            }
        }
    }
    let ok: Vec<&Conn> = conns.iter().filter(|c| connected_ok(c)).collect();
    for pair in ok.windows(2) {
        if let Some(se) = pair[0].token_expiry {
            if pair[1].connect_at > se && se < end {
                return Verdict::fail("renews_token", Some(device), format!(
                    "the token of the connection at {} expired at {}, but the next connect came at {}",
                    log.at(pair[0].connect_at), log.at(se), log.at(pair[1].connect_at)), log, Some(pair[1].connect_seq));
            }
        }
    }
    if first >= end {
        return Verdict::cannot_judge(
            "renews_token",
            Some(device),
            format!(
                "the run ended at {}, before its first token expired at {}: a device that never renews would pass too",
                log.at(end),
                log.at(first)
            ),
        );
    }
    Verdict::pass(
        "renews_token",
        Some(device),
        format!("{} connections, no expired token", ok.len()),
    )
}

/// How a device's reconnect delays must look.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffRule {
    /// The first retry after a drop may wait at most this (and "reset after success" means each
    /// new run of retries starts this low again).
    pub first_at_most: Duration,
    /// No delay above this (allowing 5 % for timing).
    pub cap: Duration,
    /// Over a run of retries, the typical delay at its end (the mean of its last third) must be at
    /// least this many times the typical delay at its start (the mean of its first third), unless
    /// the end already waits at least half the cap. Judged on the envelope rather than on
    /// consecutive pairs, so a client whose retries interleave several backing-off loops (the Node
    /// SDK retries each pending operation on its own) is judged by what the hub sees over time.
    pub growth: f64,
    /// Whether the delays must show jitter (not an exact geometric series).
    pub jitter: bool,
}

impl Default for BackoffRule {
    fn default() -> Self {
        BackoffRule {
            first_at_most: Duration::from_secs(5),
            cap: Duration::from_secs(60),
            growth: 1.5,
            jitter: true,
        }
    }
}

/// A run of reconnect attempts.
struct Run {
    /// Where it starts (the drop or refused attempt) and ends (the last CONNECT) in the log.
    from: u64,
    to: u64,
    /// The gaps between the drop and each following CONNECT until one succeeds.
    gaps: Vec<Duration>,
    /// An attempt's CONNECT came before the hub recorded the end of the one before (the hub was
    /// holding a delayed CONNACK when the device gave up): its gaps are not the device's delays.
    overlapping: bool,
}

/// Runs of reconnect attempts: for each drop or refused attempt that starts a run, the gaps between
/// the drop and each following CONNECT until one succeeds.
fn retry_runs(conns: &[Conn]) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < conns.len() {
        let c = &conns[i];
        let start = match (c.connack, c.closed) {
            (Some((0, ..)), Some((cause, at, seq)))
                if !matches!(
                    cause,
                    CloseCause::DeviceDisconnect | CloseCause::HubShutdown
                ) =>
            {
                Some((at, seq))
            }
            (Some((code, _, at, _)), _) if code != 0 => Some((at, c.connect_seq)),
            (None, Some((_, at, seq))) => Some((at, seq)),
            _ => None,
        };
        let Some((mut last, seq)) = start else {
            i += 1;
            continue;
        };
        let mut gaps = Vec::new();
        let mut overlapping = false;
        let mut j = i + 1;
        while j < conns.len() {
            overlapping |= conns[j].connect_at < last;
            gaps.push(since(last, conns[j].connect_at));
            if connected_ok(&conns[j]) {
                break;
            }
            last = conns[j]
                .connack
                .map(|c| c.2)
                .or(conns[j].closed.map(|c| c.1))
                .unwrap_or(conns[j].connect_at);
            j += 1;
        }
        if let (false, Some(to)) = (
            gaps.is_empty(),
            conns.get(j.min(conns.len() - 1)).map(|c| c.connect_seq),
        ) {
            runs.push(Run {
                from: seq,
                to,
                gaps,
                overlapping,
            });
        }
        i = j.max(i + 1);
    }
    runs
}

/// The typical wait at the start and at the end of a run of retries: the mean waits of its first
/// and last thirds (time over attempts: the inverse of the attempt rate, which interleaved loops
/// cannot disguise as medians of alternating waits can).
fn envelope(gaps: &[Duration]) -> (Duration, Duration) {
    let third = gaps.len().div_ceil(3).max(1);
    let mean = |part: &[Duration]| {
        let total: Duration = part.iter().sum();
        total / u32::try_from(part.len().max(1)).unwrap_or(u32::MAX)
    };
    let tail_from = gaps.len().saturating_sub(third);
    (
        mean(&gaps[..third.min(gaps.len())]),
        mean(&gaps[tail_from..]),
    )
}

/// The first dozen waits of a run, for people.
fn gaps_text(gaps: &[Duration]) -> String {
    let shown: Vec<String> = gaps.iter().take(12).map(|g| secs(*g)).collect();
    let more = if gaps.len() > 12 {
        format!(", … ({} in all)", gaps.len())
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(", "))
}

/// Where outages refused TCP connections (from their start to their end in the log): a device's
/// attempts then end before any CONNECT, so nothing names the device and the hub cannot time its
/// retries.
fn tcp_refused(log: &Log) -> Vec<(u64, u64)> {
    let mut open: Vec<(u64, u64)> = Vec::new();
    let mut spans = Vec::new();
    for e in log.events() {
        if let EventKind::Fault {
            id, action, detail, ..
        } = &e.kind
        {
            let refuses = detail.as_ref().is_some_and(|d| {
                d.get("type").and_then(|t| t.as_str()) == Some("outage")
                    && d.get("mode").and_then(|m| m.as_str()) == Some("refuse_tcp")
            });
            match action {
                FaultAction::Started if refuses => open.push((*id, e.seq)),
                FaultAction::Ended => {
                    if let Some(i) = open.iter().position(|(o, _)| o == id) {
                        spans.push((open.swap_remove(i).1, e.seq));
                    }
                }
                _ => {}
            }
        }
    }
    spans.extend(open.into_iter().map(|(_, from)| (from, u64::MAX)));
    spans
}

/// Jitter is judged on at least this many steps between delays. Each step (the growth from one
/// delay to the next, scaled by the doubling expected there) is the same for a backoff without
/// jitter, whatever the network adds to every attempt; with the sample device's jitter, four steps
/// land within 1 % of each other about 3 times in 100,000 (two or three, one time in 2,000).
const JITTER_SAMPLES: usize = 4;
/// Steps that spread less than this (coefficient of variation) show no jitter.
const NO_JITTER_SPREAD: f64 = 0.01;

/// Reconnects back off: the delays grow, stop at the cap, show jitter, and start low again after a
/// success. Growth compares the mean wait of each run's last third with its first third (see
/// `envelope`); jitter is judged on the steps between consecutive delays below half the cap once
/// there are enough of them (see the constants above). Runs during an outage that refuses TCP, and
/// runs whose attempts overlap, are not timed: the hub cannot see the device's own delays there.
pub fn backoff(log: &Log, device: &str, rule: BackoffRule) -> Verdict {
    let conns = connections(log, device);
    let refused = tcp_refused(log);
    let runs: Vec<(u64, Vec<Duration>)> = retry_runs(&conns)
        .into_iter()
        .filter(|r| !r.overlapping && !refused.iter().any(|(a, b)| *a < r.to && r.from < *b))
        .map(|r| (r.from, r.gaps))
        .collect();
    let longest = runs.iter().map(|r| r.1.len()).max().unwrap_or(0);
    if longest < 3 {
        return Verdict::cannot_judge(
            "backoff",
            Some(device),
            format!("the longest run of reconnect attempts has {longest} (need 3; runs during an outage that refuses TCP, or whose attempts overlap, are not timed: the hub cannot see the device's delays)"),
        );
    }
    let cap = rule.cap.mul_f64(1.05) + Duration::from_millis(50);
    let mut steps = Vec::new();
    let mut weakest: Option<f64> = None;
    for (seq, gaps) in &runs {
        if gaps[0] > rule.first_at_most {
            return Verdict::fail("backoff", Some(device), format!("a run of retries started with a {} wait (limit {}): the backoff did not start low (or reset after success)", secs(gaps[0]), secs(rule.first_at_most)), log, Some(*seq));
        }
        if let Some(g) = gaps.iter().find(|g| **g > cap) {
            return Verdict::fail(
                "backoff",
                Some(device),
                format!("a {} wait exceeds the {} cap", secs(*g), secs(rule.cap)),
                log,
                Some(*seq),
            );
        }
        for (k, pair) in gaps.windows(2).enumerate() {
            if pair[1] < rule.cap / 2 && !pair[0].is_zero() && !pair[1].is_zero() {
                // What the network adds to every attempt cancels out of the step.
                steps.push(
                    (pair[1].as_secs_f64() - pair[0].as_secs_f64())
                        / 2f64.powi(i32::try_from(k).unwrap_or(i32::MAX)),
                );
            }
        }
        if gaps.len() < 3 {
            continue;
        }
        let (head, tail) = envelope(gaps);
        let growth = tail.as_secs_f64() / head.as_secs_f64().max(0.01);
        weakest = Some(weakest.map_or(growth, |w: f64| w.min(growth)));
        if growth < rule.growth && tail < rule.cap / 2 {
            return Verdict::fail(
                "backoff",
                Some(device),
                format!(
                    "delays do not grow: a run of {} retries waits {} at its start and still {} at its end (need {:.1}× growth, or half the {} cap); waits: {}",
                    gaps.len(),
                    secs(head),
                    secs(tail),
                    rule.growth,
                    secs(rule.cap),
                    gaps_text(gaps)
                ),
                log,
                Some(*seq),
            );
        }
    }
    let longest = runs
        .iter()
        .max_by_key(|r| r.1.len())
        .map(|r| gaps_text(&r.1))
        .unwrap_or_default();
    let first_seq = runs.first().map(|r| r.0);
    let growth = weakest.unwrap_or(0.0);
    let mut jitter_note = String::new();
    if rule.jitter && steps.len() >= JITTER_SAMPLES {
        let n = steps.len() as f64;
        let mean = steps.iter().sum::<f64>() / n;
        let var = steps.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let cv = var.sqrt() / mean.abs().max(1e-9);
        if cv < NO_JITTER_SPREAD {
            return Verdict::fail("backoff", Some(device), format!("no jitter: delays follow an exact geometric series (spread {:.1}%); longest run: {longest}", cv * 100.0), log, first_seq);
        }
    } else if rule.jitter {
        jitter_note = format!(
            " (jitter not judged: {} steps between delays below half the cap, need {JITTER_SAMPLES})",
            steps.len()
        );
    }
    Verdict::pass(
        "backoff",
        Some(device),
        format!(
            "{} runs of retries, growth start→end at least {growth:.1}×, longest: {longest}{jitter_note}",
            runs.len()
        ),
    )
}

/// No two connection attempts closer than `min_gap`.
pub fn no_tight_loop(log: &Log, device: &str, min_gap: Duration) -> Verdict {
    let conns = connections(log, device);
    let mut attempts = 0;
    let mut closest: Option<Duration> = None;
    for pair in conns.windows(2) {
        attempts += 1;
        // A renewal (graceful DISCONNECT, then CONNECT at once) is not a retry.
        if matches!(pair[0].closed, Some((CloseCause::DeviceDisconnect, ..))) {
            continue;
        }
        let gap = since(pair[0].connect_at, pair[1].connect_at);
        closest = Some(closest.map_or(gap, |c: Duration| c.min(gap)));
        if gap < min_gap {
            let burst = conns
                .windows(2)
                .filter(|p| since(p[0].connect_at, p[1].connect_at) < min_gap)
                .count();
            return Verdict::fail(
                "no_tight_loop",
                Some(device),
                format!(
                    "CONNECTs {} apart at {} (limit {}); {burst} retries that close in {} attempts",
                    secs(gap),
                    log.at(pair[1].connect_at),
                    secs(min_gap),
                    conns.len()
                ),
                log,
                Some(pair[1].connect_seq),
            );
        }
    }
    Verdict::pass(
        "no_tight_loop",
        Some(device),
        format!(
            "{attempts} reconnects, closest {}",
            closest.map(secs).unwrap_or_else(|| "-".into())
        ),
    )
}

/// The device's last connection ended with its own DISCONNECT.
pub fn graceful_disconnect(log: &Log, device: &str) -> Verdict {
    let conns = connections(log, device);
    match conns
        .iter()
        .rev()
        .find(|c| connected_ok(c))
        .and_then(|c| c.closed)
    {
        Some((CloseCause::DeviceDisconnect, at, _)) => Verdict::pass(
            "graceful_disconnect",
            Some(device),
            format!("DISCONNECT at {}", log.at(at)),
        ),
        Some((cause, at, seq)) => Verdict::fail(
            "graceful_disconnect",
            Some(device),
            format!(
                "the last connection ended at {} without DISCONNECT ({cause:?})",
                log.at(at)
            ),
            log,
            Some(seq),
        ),
        None => Verdict::fail(
            "graceful_disconnect",
            Some(device),
            "its last connection never ended".into(),
            log,
            conns.last().map(|c| c.connect_seq),
        ),
    }
}

/// Every CONNECT asks for a keep-alive within `[min, max]` seconds. IoT Hub's idle timeout is
/// `min(1.5 × keep-alive, 1767 s)`, so anything over 1177 s is silently capped.
pub fn keepalive(log: &Log, device: &str, min: u16, max: u16) -> Verdict {
    let conns = connections(log, device);
    for c in &conns {
        if c.keep_alive < min || c.keep_alive > max {
            return Verdict::fail("keepalive", Some(device), format!(
                "CONNECT at {} asks for a {}s keep-alive (allowed {min}–{max}s; the hub caps its idle timeout at 1767s)", log.at(c.connect_at), c.keep_alive), log, Some(c.connect_seq));
        }
    }
    let values: BTreeSet<u16> = conns.iter().map(|c| c.keep_alive).collect();
    Verdict::pass(
        "keepalive",
        Some(device),
        format!("{} CONNECTs, keep-alive {values:?}s", conns.len()),
    )
}
