//! Fleet rules: how a fleet comes back after a mass drop.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use fakehub::EventKind;

use super::{secs, since, Verdict};
use crate::log::Log;

/// After the first mass drop (a `mass_drop` fault), the fleet's reconnects are spread out: at most
/// `max_per_second` devices back in any second, and their reconnects spread over at least
/// `min_spread`.
pub fn fleet_spread(log: &Log, max_per_second: usize, min_spread: Duration) -> Verdict {
    let Some(start) = log.events().iter().find(|e| matches!(&e.kind, EventKind::Fault { fault, action: fakehub::events::FaultAction::Started, .. } if fault == "mass_drop")) else {
        return Verdict::cannot_judge("fleet_spread", None, "no mass drop in the log".into());
    };
    // What follows the drop in the log's order (connections made at the drop's instant, before it,
    // are not reconnects).
    let (t0, from) = (start.time, start.seq);
    let after = || log.events().iter().filter(move |e| e.seq > from);
    let attempts: Vec<SystemTime> = after()
        .filter(|e| matches!(e.kind, EventKind::Connect { .. }))
        .map(|e| e.time)
        .collect();
    let mut first_back: HashMap<&str, SystemTime> = HashMap::new();
    for e in after() {
        if let (EventKind::Connack { code: 0, .. }, Some(d)) = (&e.kind, e.device.as_deref()) {
            first_back.entry(d).or_insert(e.time);
        }
    }
    // The load the fleet puts on the hub when it comes back: successful reconnects per second.
    let mut back: Vec<SystemTime> = first_back.values().copied().collect();
    back.sort();
    let mut peak = 0;
    let mut peak_at = t0;
    // The most reconnects in any second that starts at one of them (a window sliding over the
    // sorted times: linear in the fleet).
    let mut end = 0;
    for (i, t) in back.iter().enumerate() {
        end = end.max(i);
        while back
            .get(end)
            .is_some_and(|u| since(*t, *u) < Duration::from_secs(1))
        {
            end += 1;
        }
        let n = end - i;
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
