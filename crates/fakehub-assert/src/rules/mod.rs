//! The assertion catalogue. Each rule reads only the event log and returns a [`Verdict`]: pass, fail
//! (which device, which rule, the numbers, and the few events around the violation), or cannot
//! judge (the log holds nothing the rule is about, or the run was too short to tell — never a pass
//! nor a fail the log does not support).
//!
//! One module per family: [`connections`] (connecting, recovering, renewing, backing off, ending),
//! [`fleet`], [`messages`] (the QoS 1 ledger, subscriptions), [`mod@records`], [`service`] (what the
//! service side asked of the device), [`provisioning`] (the Device Provisioning Service).

pub mod connections;
pub mod fleet;
pub mod messages;
pub mod provisioning;
pub mod records;
pub mod service;

pub use connections::{
    backoff, connected, graceful_disconnect, keepalive, no_tight_loop, recovers, renews_token,
};
pub use fleet::fleet_spread;
pub use messages::no_message_loss;
pub use messages::resubscribes;
pub use provisioning::{honours_retry_after, provisions, reprovisions_after};
pub use records::records;
pub use service::{c2d_delivered, desired_applied, method};

use std::time::{Duration, SystemTime};

use fakehub::events::Connection;
use fakehub::EventKind;

use crate::log::Log;

/// The outcome of one rule for one device (or the fleet).
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub rule: String,
    pub device: Option<String>,
    pub passed: bool,
    /// False when the rule could not be judged on this log: neither a pass nor a fail.
    pub judged: bool,
    /// The numbers, in one line (for a rule not judged: why).
    pub summary: String,
    /// On failure: the events around the violation.
    pub excerpt: Vec<String>,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = self.device.as_deref().unwrap_or("fleet");
        write!(f, "{} {who} · {}: {}", self.mark(), self.rule, self.summary)?;
        for line in &self.excerpt {
            write!(f, "\n    {line}")?;
        }
        Ok(())
    }
}

impl Verdict {
    /// `PASS`, `FAIL` or `CANNOT JUDGE`.
    pub fn mark(&self) -> &'static str {
        match (self.judged, self.passed) {
            (false, _) => "CANNOT JUDGE",
            (true, true) => "PASS",
            (true, false) => "FAIL",
        }
    }

    pub(crate) fn pass(rule: &str, device: Option<&str>, summary: String) -> Verdict {
        Verdict {
            rule: rule.to_owned(),
            device: device.map(str::to_owned),
            passed: true,
            judged: true,
            summary,
            excerpt: vec![],
        }
    }

    pub(crate) fn fail(
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
            judged: true,
            summary,
            excerpt,
        }
    }

    /// The rule cannot be judged on this log; `why` says what is missing.
    pub fn cannot_judge(rule: &str, device: Option<&str>, why: String) -> Verdict {
        Verdict {
            rule: rule.to_owned(),
            device: device.map(str::to_owned),
            passed: false,
            judged: false,
            summary: format!("cannot judge: {why}"),
            excerpt: vec![],
        }
    }

    /// Panic with the verdict when it did not pass (for `cargo test`).
    #[track_caller]
    pub fn assert(&self) {
        assert!(self.passed, "\n{self}\n");
    }
}

pub(crate) fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

pub(crate) fn since(a: SystemTime, b: SystemTime) -> Duration {
    b.duration_since(a).unwrap_or_default()
}

/// A device's connections that got as far as CONNECT, in order (from the log's lifecycle fold).
pub(crate) fn connections<'a>(log: &'a Log, device: &'a str) -> Vec<&'a Connection> {
    log.connections_of(device).collect()
}

/// When the run ends for the rules that judge "the end": the `timeline_ended` marker the runner
/// writes before it stops the devices, else the last event.
pub(crate) fn end_of(log: &Log) -> (SystemTime, u64) {
    log.end()
}

/// The ends of the device's process (exited by itself or crashed), with their time and how.
pub(crate) fn process_ends(log: &Log, device: &str) -> Vec<(SystemTime, String)> {
    log.of_device(device)
        .filter_map(|e| match &e.kind {
            EventKind::DeviceProcess {
                action,
                code,
                signal,
            } if matches!(action.as_str(), "exited" | "crashed") => {
                let how = match (code, signal) {
                    (_, Some(s)) => format!("{action} (signal {s})"),
                    (Some(c), None) => format!("{action} (exit status {c})"),
                    (None, None) => action.clone(),
                };
                Some((e.time, how))
            }
            _ => None,
        })
        .collect()
}

/// "; the device process exited at 00:10.123 (exit status 3)" when it did after `after` (or just
/// before it: the runner may see the exit a moment before the hub sees the connection end).
pub(crate) fn process_note(log: &Log, device: &str, after: SystemTime) -> String {
    const SLACK: Duration = Duration::from_secs(1);
    process_ends(log, device)
        .into_iter()
        .find(|(t, _)| *t + SLACK >= after)
        .map(|(t, how)| format!("; the device process {how} at {}", log.at(t)))
        .unwrap_or_default()
}
