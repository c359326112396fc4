//! The assertion catalogue. Each rule reads only the event log and returns a [`Verdict`] that says,
//! on failure, which device, which rule, the numbers, and the few events around the violation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use fakehub::events::Direction;
use fakehub::{CloseCause, Event, EventKind};

use crate::log::{fmt_offset, Log};

/// The outcome of one rule for one device (or the fleet).
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub rule: String,
    pub device: Option<String>,
    pub passed: bool,
    /// The numbers, in one line.
    pub summary: String,
    /// On failure: the events around the violation.
    pub excerpt: Vec<String>,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.passed { "PASS" } else { "FAIL" };
        let who = self.device.as_deref().unwrap_or("fleet");
        write!(f, "{mark} {who} · {}: {}", self.rule, self.summary)?;
        for line in &self.excerpt {
            write!(f, "\n    {line}")?;
        }
        Ok(())
    }
}

impl Verdict {
    fn pass(rule: &str, device: Option<&str>, summary: String) -> Verdict {
        Verdict {
            rule: rule.to_owned(),
            device: device.map(str::to_owned),
            passed: true,
            summary,
            excerpt: vec![],
        }
    }

    fn fail(
        rule: &str,
        device: Option<&str>,
        summary: String,
        log: &Log,
        at_seq: Option<u64>,
    ) -> Verdict {
        // Message-level rules show packets; the others show connects, closes and faults.
        let messages = matches!(rule, "no_message_loss" | "resubscribes");
        let excerpt = at_seq
            .map(|s| log.excerpt(device, s, 3, messages))
            .unwrap_or_default();
        Verdict {
            rule: rule.to_owned(),
            device: device.map(str::to_owned),
            passed: false,
            summary,
            excerpt,
        }
    }

    /// Panic with the verdict when it failed (for `cargo test`).
    #[track_caller]
    pub fn assert(&self) {
        assert!(self.passed, "\n{self}\n");
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn since(a: SystemTime, b: SystemTime) -> Duration {
    b.duration_since(a).unwrap_or_default()
}

/// A connection of a device, as the hub saw it.
#[derive(Debug, Clone)]
struct Conn {
    connect_seq: u64,
    connect_at: SystemTime,
    keep_alive: u16,
    token_expiry: Option<SystemTime>,
    connack: Option<(u8, bool, SystemTime, Option<u32>)>,
    closed: Option<(CloseCause, SystemTime, u64)>,
}

/// Every connection attempt of a device that got as far as CONNECT, in order (from the log's
/// lifecycle fold).
fn connections(log: &Log, device: &str) -> Vec<Conn> {
    log.lifecycle()
        .of_device(device)
        .filter_map(|c| {
            let connect = c.connect.as_ref()?;
            Some(Conn {
                connect_seq: connect.at.seq,
                connect_at: connect.at.time,
                keep_alive: connect.keep_alive,
                token_expiry: connect.token_expiry,
                connack: c.connack.as_ref().map(|a| {
                    (
                        a.code,
                        a.session_present,
                        a.at.time,
                        a.result.map(|r| r.code()),
                    )
                }),
                closed: c.closed.as_ref().map(|x| (x.cause, x.at.time, x.at.seq)),
            })
        })
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

fn end_of(log: &Log) -> SystemTime {
    log.events().last().map(|e| e.time).unwrap_or(log.start())
}

/// The device is connected at the end of the run: at the `timeline_ended` marker when the runner
/// wrote one (it then stops the devices), else at the end of the log.
pub fn connected(log: &Log, device: &str) -> Verdict {
    let end_seq = log
        .events()
        .iter()
        .find(|e| matches!(e.kind, EventKind::TimelineEnded))
        .map(|e| e.seq)
        .unwrap_or(u64::MAX);
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
                    "not connected at the end: last connection closed at {} ({cause:?})",
                    log.at(at)
                ),
                log,
                Some(seq),
            )
        }
        None => Verdict::fail(
            "connected",
            Some(device),
            "never connected".into(),
            log,
            conns.last().map(|c| c.connect_seq),
        ),
    }
}

/// Every hub-side drop is followed by a successful CONNECT within `within`.
pub fn recovers(log: &Log, device: &str, within: Duration) -> Verdict {
    let conns = connections(log, device);
    let drops = drops(&conns);
    let end = end_of(log);
    let mut worst = Duration::ZERO;
    for (at, seq, cause) in &drops {
        let back = conns
            .iter()
            .filter_map(|c| match c.connack {
                Some((0, _, t, _)) if t > *at => Some(t),
                _ => None,
            })
            .next();
        match back {
            Some(t) if since(*at, t) <= within => worst = worst.max(since(*at, t)),
            Some(t) => {
                return Verdict::fail(
                    "recovers",
                    Some(device),
                    format!(
                    "the drop at {} ({cause:?}) was followed by a connect only {} later (limit {})",
                    log.at(*at), secs(since(*at, t)), secs(within)),
                    log,
                    Some(*seq),
                );
            }
            None if since(*at, end) >= within => {
                return Verdict::fail("recovers", Some(device), format!(
                    "the drop at {} ({cause:?}) was never followed by a successful connect ({} until the end)",
                    log.at(*at), secs(since(*at, end))), log, Some(*seq));
            }
            None => {
                return Verdict::fail(
                    "recovers",
                    Some(device),
                    format!(
                        "the run ended {} after the drop at {}: too short to judge a {} recovery",
                        secs(since(*at, end)),
                        log.at(*at),
                        secs(within)
                    ),
                    log,
                    Some(*seq),
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
/// and each token-authenticated connection is replaced before its token's `se`.
pub fn renews_token(log: &Log, device: &str) -> Verdict {
    let conns = connections(log, device);
    let end = end_of(log);
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
        if let Some((code, _, at, Some(401003))) = c.connack {
            if code != 0 && c.token_expiry.is_some_and(|se| se < at) {
                return Verdict::fail(
                    "renews_token",
                    Some(device),
                    format!(
                        "at {} it connected with a token that had expired at {}",
                        log.at(at),
                        log.at(c.token_expiry.unwrap_or(at))
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
    /// The median ratio of consecutive delays below the cap must be at least this.
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

/// Runs of reconnect attempts: for each drop or refused attempt that starts a run, the gaps between
/// the drop and each following CONNECT until one succeeds.
fn retry_runs(conns: &[Conn]) -> Vec<(u64, Vec<Duration>)> {
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
        let mut j = i + 1;
        while j < conns.len() {
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
        if !gaps.is_empty() {
            runs.push((seq, gaps));
        }
        i = j.max(i + 1);
    }
    runs
}

/// Reconnects back off: the delays grow, stop at the cap, show jitter, and start low again after a
/// success.
pub fn backoff(log: &Log, device: &str, rule: BackoffRule) -> Verdict {
    let conns = connections(log, device);
    let runs = retry_runs(&conns);
    let longest = runs.iter().map(|r| r.1.len()).max().unwrap_or(0);
    if longest < 3 {
        return Verdict::fail("backoff", Some(device), format!("not enough retries to judge: the longest run of reconnect attempts has {longest} (need 3)"), log, None);
    }
    let cap = rule.cap.mul_f64(1.05) + Duration::from_millis(50);
    let mut ratios = Vec::new();
    let mut normalized = Vec::new();
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
            if pair[1] < rule.cap / 2 && !pair[0].is_zero() {
                ratios.push(pair[1].as_secs_f64() / pair[0].as_secs_f64());
                normalized.push(
                    pair[1].as_secs_f64()
                        / (gaps[0].as_secs_f64().max(1e-9) * 2f64.powi(k as i32 + 1)),
                );
            }
        }
    }
    let gaps_text = runs
        .iter()
        .max_by_key(|r| r.1.len())
        .map(|r| {
            let shown: Vec<String> = r.1.iter().take(12).map(|g| secs(*g)).collect();
            let more = if r.1.len() > 12 {
                format!(", … ({} in all)", r.1.len())
            } else {
                String::new()
            };
            format!("{}{more}", shown.join(", "))
        })
        .unwrap_or_default();
    ratios.sort_by(|a, b| a.total_cmp(b));
    let median = ratios.get(ratios.len() / 2).copied().unwrap_or(0.0);
    let first_seq = runs.first().map(|r| r.0);
    if ratios.is_empty() || median < rule.growth {
        return Verdict::fail("backoff", Some(device), format!("delays do not grow: median ratio {median:.2} (need ≥ {:.2}); longest run: {gaps_text}", rule.growth), log, first_seq);
    }
    if rule.jitter {
        let mean = normalized.iter().sum::<f64>() / normalized.len() as f64;
        let var =
            normalized.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / normalized.len() as f64;
        let cv = var.sqrt() / mean.max(1e-9);
        if cv < 0.02 {
            return Verdict::fail("backoff", Some(device), format!("no jitter: delays follow an exact geometric series (spread {:.1}%); longest run: {gaps_text}", cv * 100.0), log, first_seq);
        }
    }
    Verdict::pass(
        "backoff",
        Some(device),
        format!(
            "{} runs of retries, median growth {median:.2}, longest: {gaps_text}",
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

/// After the first mass drop (a `mass_drop` fault), the fleet's reconnects are spread out: at most
/// `max_per_second` devices back in any second, and their reconnects spread over at least
/// `min_spread`.
pub fn fleet_spread(log: &Log, max_per_second: usize, min_spread: Duration) -> Verdict {
    let Some(start) = log.events().iter().find(|e| matches!(&e.kind, EventKind::Fault { fault, action: fakehub::events::FaultAction::Started, .. } if fault == "mass_drop")) else {
        return Verdict::fail("fleet_spread", None, "no mass drop in the log".into(), log, None);
    };
    let t0 = start.time;
    let attempts: Vec<SystemTime> = log
        .events()
        .iter()
        .filter(|e| e.time >= t0 && matches!(e.kind, EventKind::Connect { .. }))
        .map(|e| e.time)
        .collect();
    let mut first_back: HashMap<&str, SystemTime> = HashMap::new();
    for e in log.events().iter().filter(|e| e.time >= t0) {
        if let (EventKind::Connack { code: 0, .. }, Some(d)) = (&e.kind, e.device.as_deref()) {
            first_back.entry(d).or_insert(e.time);
        }
    }
    // The load the fleet puts on the hub when it comes back: successful reconnects per second.
    let mut back: Vec<SystemTime> = first_back.values().copied().collect();
    back.sort();
    let mut peak = 0;
    let mut peak_at = t0;
    for (i, t) in back.iter().enumerate() {
        let n = back[i..]
            .iter()
            .take_while(|u| since(*t, **u) < Duration::from_secs(1))
            .count();
        if n > peak {
            peak = n;
            peak_at = *t;
        }
    }
    let spread = match (back.iter().min(), back.iter().max()) {
        (Some(a), Some(b)) => since(*a, *b),
        _ => Duration::ZERO,
    };
    let summary = format!("{} devices back, reconnects spread over {}, peak {peak} reconnects/s at {}, {} CONNECT attempts", back.len(), secs(spread), log.at(peak_at), attempts.len());
    if peak > max_per_second || spread < min_spread {
        Verdict::fail(
            "fleet_spread",
            None,
            format!(
                "{summary} (limits: ≤ {max_per_second}/s, spread ≥ {})",
                secs(min_spread)
            ),
            log,
            Some(start.seq),
        )
    } else {
        Verdict::pass("fleet_spread", None, summary)
    }
}

/// How telemetry is identified in the QoS 1 ledger.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Ledger {
    /// By `$.mid`: every unacknowledged message must come again.
    #[default]
    MessageId,
    /// By a number: the `seq` property or the message id's trailing digits; gaps are losses too.
    Sequence,
}

fn seq_of(
    message_id: Option<&str>,
    properties: &fakehub::iothub::properties::PropertyBag,
) -> Option<u64> {
    if let Some(s) = properties
        .application
        .get("seq")
        .and_then(|s| s.parse().ok())
    {
        return Some(s);
    }
    let id = message_id?;
    let digits: String = id
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().ok()
}

/// QoS 1 telemetry: nothing lost (every message the hub did not acknowledge comes again; with
/// sequence numbers, no gaps), nothing reordered. Duplicates (DUP resends) are reported, not failed.
pub fn no_message_loss(log: &Log, device: &str, ledger: Ledger) -> Verdict {
    // Per connection: inbound QoS 1 publishes by packet id, and which got a PUBACK.
    let mut pending: HashMap<(u64, u16), (String, u64)> = HashMap::new();
    let mut received: BTreeMap<String, usize> = BTreeMap::new();
    let mut unacked: Vec<(String, u64)> = Vec::new();
    let mut seqs: Vec<(u64, bool, u64)> = Vec::new();
    let mut last_close: Option<(CloseCause, usize)> = None;
    for e in log.of_device(device) {
        let conn = e.conn.unwrap_or(0);
        match &e.kind {
            EventKind::Publish {
                dir: Direction::In,
                qos: 1,
                pkid,
                dup,
                message_id,
                properties,
                ..
            } if !properties
                .application
                .contains_key("AzIoTHub_FaultOperationType") =>
            {
                let key = match ledger {
                    Ledger::MessageId => message_id.clone(),
                    Ledger::Sequence => {
                        seq_of(message_id.as_deref(), properties).map(|s| s.to_string())
                    }
                };
                let Some(key) = key else { continue };
                *received.entry(key.clone()).or_default() += 1;
                pending.insert((conn, *pkid), (key, e.seq));
                if let Some(s) = seq_of(message_id.as_deref(), properties) {
                    seqs.push((s, *dup, e.seq));
                }
            }
            EventKind::Puback {
                dir: Direction::Out,
                pkid,
            } => {
                pending.remove(&(conn, *pkid));
            }
            EventKind::Closed { cause, .. } => {
                let left: Vec<(u64, u16)> = pending
                    .keys()
                    .filter(|(c, _)| *c == conn)
                    .copied()
                    .collect();
                let mut here = Vec::new();
                for k in left {
                    if let Some(v) = pending.remove(&k) {
                        here.push(v);
                    }
                }
                last_close = Some((*cause, here.len()));
                unacked.extend(here);
            }
            _ => {}
        }
    }
    // Messages unacknowledged when the device's last connection ended with its own DISCONNECT were
    // in flight when it stopped: the device still holds them, so they are not counted lost.
    if let Some((CloseCause::DeviceDisconnect, n)) = last_close {
        let keep = unacked.len() - n;
        unacked.truncate(keep);
    }
    let mut lost: BTreeSet<String> = BTreeSet::new();
    for (key, seq) in &unacked {
        let later = log.of_device(device).any(|e| e.seq > *seq && matches!(&e.kind, EventKind::Publish { dir: Direction::In, message_id, properties, .. } if match ledger {
            Ledger::MessageId => message_id.as_deref() == Some(key.as_str()),
            Ledger::Sequence => seq_of(message_id.as_deref(), properties).map(|s| s.to_string()).as_deref() == Some(key.as_str()),
        }));
        if !later {
            lost.insert(key.clone());
        }
    }
    let mut first_bad = None;
    if ledger == Ledger::Sequence {
        let got: BTreeSet<u64> = seqs.iter().map(|s| s.0).collect();
        if let (Some(min), Some(max)) = (got.iter().next(), got.iter().next_back()) {
            for s in *min..=*max {
                if !got.contains(&s) {
                    lost.insert(s.to_string());
                }
            }
        }
    }
    let mut reordered = Vec::new();
    let mut high: Option<u64> = None;
    for (s, dup, seq) in &seqs {
        if *dup {
            continue;
        }
        if high.is_some_and(|h| *s < h) {
            reordered.push(*s);
            first_bad.get_or_insert(*seq);
        }
        high = Some(high.map_or(*s, |h| h.max(*s)));
    }
    let dups: usize = received.values().map(|n| n - 1).sum();
    let summary = format!(
        "{} messages, {} lost, {dups} redelivered, {} reordered",
        received.len(),
        lost.len(),
        reordered.len()
    );
    if !lost.is_empty() {
        let ids: Vec<&String> = lost.iter().take(10).collect();
        let at = unacked
            .iter()
            .find(|(k, _)| lost.contains(k))
            .map(|u| u.1)
            .or(first_bad);
        Verdict::fail(
            "no_message_loss",
            Some(device),
            format!("{summary}; lost: {ids:?}"),
            log,
            at,
        )
    } else if !reordered.is_empty() {
        Verdict::fail(
            "no_message_loss",
            Some(device),
            format!(
                "{summary}; out of order: {:?}",
                &reordered[..reordered.len().min(10)]
            ),
            log,
            first_bad,
        )
    } else {
        Verdict::pass("no_message_loss", Some(device), summary)
    }
}

/// After every reconnect that found no session (`sessionPresent=0`), the device subscribes again
/// to everything it had subscribed to, within `within`.
pub fn resubscribes(log: &Log, device: &str, within: Duration) -> Verdict {
    let mut known: BTreeSet<String> = BTreeSet::new();
    let mut checked = 0;
    let events: Vec<&std::sync::Arc<Event>> = log.of_device(device).collect();
    for (i, e) in events.iter().enumerate() {
        match &e.kind {
            EventKind::Subscribe { filters, .. } => {
                known.extend(filters.iter().map(|f| f.0.clone()))
            }
            EventKind::Connack {
                code: 0,
                session_present: false,
                ..
            } if !known.is_empty() => {
                checked += 1;
                let conn = e.conn;
                let mut again: BTreeSet<String> = BTreeSet::new();
                for later in &events[i + 1..] {
                    if later.conn != conn || since(e.time, later.time) > within {
                        break;
                    }
                    if let EventKind::Subscribe { filters, .. } = &later.kind {
                        again.extend(filters.iter().map(|f| f.0.clone()));
                    }
                }
                let missing: Vec<&String> = known.difference(&again).collect();
                if !missing.is_empty() {
                    return Verdict::fail("resubscribes", Some(device), format!(
                        "the reconnect at {} found no session, and {missing:?} was not subscribed again within {}", log.at(e.time), secs(within)), log, Some(e.seq));
                }
            }
            _ => {}
        }
    }
    Verdict::pass(
        "resubscribes",
        Some(device),
        format!("{checked} reconnects without a session, each restored its subscriptions"),
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

/// A check on the Connections records.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecordRule {
    pub code: Option<u32>,
    pub device: Option<String>,
    pub count: Option<usize>,
    pub min: Option<usize>,
    pub max: Option<usize>,
    /// Every matching record within this window of the log's start: (at, tolerance).
    pub at: Option<(Duration, Duration)>,
}

/// Count Connections records with a result code (and device), and check when they happened.
pub fn records(log: &Log, rule: &RecordRule) -> Verdict {
    let recs = log.records();
    let matching: Vec<_> = recs
        .iter()
        .filter(|r| rule.code.is_none_or(|c| r.code() == Some(c)))
        .filter(|r| {
            rule.device
                .as_deref()
                .is_none_or(|d| r.properties().is_some_and(|p| p.device_id == d))
        })
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
    let times: Vec<String> = matching
        .iter()
        .take(8)
        .map(|r| {
            humantime::parse_rfc3339(&r.time)
                .map(|t| log.at(t))
                .unwrap_or_default()
        })
        .collect();
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
        for r in &matching {
            let t = humantime::parse_rfc3339(&r.time)
                .map(|t| since(log.start(), t))
                .unwrap_or_default();
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
