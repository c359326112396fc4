//! Message rules: the QoS 1 ledger of the device's telemetry, and subscriptions restored after a
//! reconnect without a session.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use fakehub::events::Direction;
use fakehub::{CloseCause, Event, EventKind};

use super::{secs, since, Verdict};
use crate::log::Log;

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

/// What `no_message_loss` holds the device to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LossRule {
    pub by: Ledger,
    /// Fail when more than this many messages arrive more than once (default: duplicates are
    /// reported, not failed: QoS 1 is at-least-once).
    pub max_duplicates: Option<usize>,
    /// Fail when messages arrive out of order (default: reported, not failed: MQTT 3.1.1 does not
    /// promise order across a reconnect for messages resent with new packet ids).
    pub ordered: bool,
}

/// QoS 1 telemetry: nothing lost (every message the hub did not acknowledge comes again; with
/// sequence numbers, no gaps). Lost, duplicated and reordered messages are counted apart; only a
/// loss fails, unless the rule also asks for `max_duplicates` or `ordered`.
pub fn no_message_loss(log: &Log, device: &str, rule: LossRule) -> Verdict {
    let ledger = rule.by;
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
            // A provisioning connection carries no telemetry.
            EventKind::Closed { .. }
                if log.lifecycle().get(conn).is_some_and(|c| c.dps.is_some()) => {}
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
    if received.is_empty() {
        return Verdict::cannot_judge(
            "no_message_loss",
            Some(device),
            "the device sent no QoS 1 telemetry the ledger can follow".into(),
        );
    }
    let dups: usize = received.values().map(|n| n.saturating_sub(1)).sum();
    let summary = format!(
        "{} messages, {} lost, {dups} duplicated, {} reordered",
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
    } else if rule.max_duplicates.is_some_and(|max| dups > max) {
        let first_dup = log
            .of_device(device)
            .find(|e| {
                matches!(
                    e.kind,
                    EventKind::Publish {
                        dir: Direction::In,
                        dup: true,
                        ..
                    }
                )
            })
            .map(|e| e.seq);
        Verdict::fail(
            "no_message_loss",
            Some(device),
            format!(
                "{summary}; more than the {} duplicates allowed",
                rule.max_duplicates.unwrap_or(0)
            ),
            log,
            first_dup,
        )
    } else if rule.ordered && !reordered.is_empty() {
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
/// to everything it had subscribed to, within `within`. A connection on which the hub never
/// answered anything (inside a blackhole or half-open fault, which swallow the device's
/// SUBSCRIBE, or closed before any exchange) is not judged: no device could show it resubscribed.
pub fn resubscribes(log: &Log, device: &str, within: Duration) -> Verdict {
    let exchanged: BTreeSet<u64> = super::connections(log, device)
        .into_iter()
        .filter(|c| c.first_exchange.is_some())
        .map(|c| c.conn)
        .collect();
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
            } if !known.is_empty() && e.conn.is_some_and(|c| exchanged.contains(&c)) => {
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
