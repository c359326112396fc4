//! The YAML `expect:` catalogue: each entry is one rule of [`crate::rules`], for one device or,
//! when `device` is left out, for every device of the run (one verdict each). Only `fleet_spread`
//! and `records` with `fleet: true` judge the fleet as a whole.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::log::Log;
use crate::rules::connections::BackoffRule;
use crate::rules::messages::{Ledger, LossRule};
use crate::rules::records::RecordRule;
use crate::rules::{self, Verdict};

/// A time since the start of the run with a tolerance, written `65m ± 1m` (or `65m +- 1m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    pub at: Duration,
    pub tolerance: Duration,
}

impl std::str::FromStr for TimeWindow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (at, tol) = s
            .split_once('±')
            .or_else(|| s.split_once("+-"))
            .unwrap_or((s, "0s"));
        let parse = |t: &str| {
            humantime::parse_duration(t.trim()).map_err(|e| format!("`{}`: {e}", t.trim()))
        };
        Ok(TimeWindow {
            at: parse(at)?,
            tolerance: parse(tol)?,
        })
    }
}

impl<'de> Deserialize<'de> for TimeWindow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e| serde::de::Error::custom(format!("expected a time like `65m ± 1m`: {e}")))
    }
}

impl Serialize for TimeWindow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!(
            "{} ± {}",
            humantime::format_duration(self.at),
            humantime::format_duration(self.tolerance)
        ))
    }
}

/// One expectation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Expectation {
    /// Connected at the end of the run.
    Connected {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
    },
    /// Every hub-side drop followed by a successful connect within `within`.
    Recovers {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[schemars(with = "String")]
        #[serde(with = "humantime_serde")]
        within: Duration,
    },
    /// The SAS token is renewed before it expires.
    RenewsToken {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
    },
    /// Reconnect delays grow, cap, jitter and reset.
    Backoff {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[schemars(with = "Option<String>")]
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Option::is_none"
        )]
        first_at_most: Option<Duration>,
        #[schemars(with = "Option<String>")]
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Option::is_none"
        )]
        cap: Option<Duration>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        growth: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jitter: Option<bool>,
    },
    /// No CONNECTs closer together than `min_gap` (default 100ms).
    NoTightLoop {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[schemars(with = "Option<String>")]
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Option::is_none"
        )]
        min_gap: Option<Duration>,
    },
    /// After a mass drop: peak CONNECTs per second and the spread of the reconnects.
    FleetSpread {
        max_per_second: usize,
        #[schemars(with = "String")]
        #[serde(with = "humantime_serde")]
        min_spread: Duration,
    },
    /// The QoS 1 ledger: nothing lost (duplicates and reordering are reported; they fail only with
    /// `max_duplicates` and `ordered: true`).
    NoMessageLoss {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[serde(default)]
        by: Ledger,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_duplicates: Option<usize>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ordered: bool,
    },
    /// Subscriptions restored after a reconnect without a session (within `within`, default 30s).
    Resubscribes {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[schemars(with = "Option<String>")]
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Option::is_none"
        )]
        within: Option<Duration>,
    },
    /// The last connection ended with DISCONNECT.
    GracefulDisconnect {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
    },
    /// The keep-alive asked for is within bounds (default 1–1177 s).
    Keepalive {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<u16>,
    },
    /// Connections records with a result code: how many, and when — per device, or with
    /// `fleet: true` for all devices' records together.
    Records {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        fleet: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(with = "Option<String>")]
        at: Option<TimeWindow>,
    },
    /// Direct method calls (`name`, or any) answered with `status` (default 200) within `within`
    /// (default 30s).
    Method {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<i32>,
        #[schemars(with = "Option<String>")]
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Option::is_none"
        )]
        within: Option<Duration>,
    },
    /// Cloud-to-device messages completed (PUBACK) within `within` (default 60s); at least `count`.
    C2dDelivered {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<usize>,
        #[schemars(with = "Option<String>")]
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Option::is_none"
        )]
        within: Option<Duration>,
    },
    /// Desired-property updates acknowledged in the reported properties within `within` (default
    /// 60s).
    DesiredApplied {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[schemars(with = "Option<String>")]
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Option::is_none"
        )]
        within: Option<Duration>,
    },
    /// Every provisioning — a registration with the Device Provisioning Service — ends with the
    /// device assigned a hub and connected to it within `within`.
    Provisions {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[schemars(with = "String")]
        #[serde(with = "humantime_serde")]
        within: Duration,
    },
    /// After a DPS answer that asks it to wait (429 or 5xx with `retry-after`; with `polling: true`
    /// also a 202's), the device's next request comes no sooner (give or take `tolerance`, default
    /// 100ms).
    HonoursRetryAfter {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        polling: bool,
        #[schemars(with = "Option<String>")]
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Option::is_none"
        )]
        tolerance: Option<Duration>,
    },
    /// After `failures` (default 3) refused or unanswered connects to its hub in a row, the device
    /// registers with DPS again, and is connected to a hub within `within` (default 2m) of that.
    ReprovisionsAfter {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failures: Option<u32>,
        #[schemars(with = "Option<String>")]
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Option::is_none"
        )]
        within: Option<Duration>,
    },
}

impl Expectation {
    /// The rule's name, as in the YAML.
    pub fn name(&self) -> &'static str {
        match self {
            Expectation::Connected { .. } => "connected",
            Expectation::Recovers { .. } => "recovers",
            Expectation::RenewsToken { .. } => "renews_token",
            Expectation::Backoff { .. } => "backoff",
            Expectation::NoTightLoop { .. } => "no_tight_loop",
            Expectation::FleetSpread { .. } => "fleet_spread",
            Expectation::NoMessageLoss { .. } => "no_message_loss",
            Expectation::Resubscribes { .. } => "resubscribes",
            Expectation::GracefulDisconnect { .. } => "graceful_disconnect",
            Expectation::Keepalive { .. } => "keepalive",
            Expectation::Records { .. } => "records",
            Expectation::Method { .. } => "method",
            Expectation::C2dDelivered { .. } => "c2d_delivered",
            Expectation::DesiredApplied { .. } => "desired_applied",
            Expectation::Provisions { .. } => "provisions",
            Expectation::HonoursRetryAfter { .. } => "honours_retry_after",
            Expectation::ReprovisionsAfter { .. } => "reprovisions_after",
        }
    }

    /// The device the expectation names, if it names one.
    pub fn device(&self) -> Option<&str> {
        match self {
            Expectation::Connected { device }
            | Expectation::Recovers { device, .. }
            | Expectation::RenewsToken { device }
            | Expectation::Backoff { device, .. }
            | Expectation::NoTightLoop { device, .. }
            | Expectation::NoMessageLoss { device, .. }
            | Expectation::Resubscribes { device, .. }
            | Expectation::GracefulDisconnect { device }
            | Expectation::Keepalive { device, .. }
            | Expectation::Records { device, .. }
            | Expectation::Method { device, .. }
            | Expectation::C2dDelivered { device, .. }
            | Expectation::DesiredApplied { device, .. }
            | Expectation::Provisions { device, .. }
            | Expectation::HonoursRetryAfter { device, .. }
            | Expectation::ReprovisionsAfter { device, .. } => device.as_deref(),
            Expectation::FleetSpread { .. } => None,
        }
    }

    /// Judge the log: one verdict per device the expectation covers (the devices of the log).
    pub fn evaluate(&self, log: &Log) -> Vec<Verdict> {
        self.evaluate_for(log, &log.devices())
    }

    /// Judge the log for a run's `devices`: one verdict per device the expectation covers.
    pub fn evaluate_for(&self, log: &Log, devices: &[String]) -> Vec<Verdict> {
        let for_devices = |device: &Option<String>, f: &dyn Fn(&str) -> Verdict| -> Vec<Verdict> {
            match device {
                Some(d) => vec![f(d)],
                None => devices.iter().map(|d| f(d)).collect(),
            }
        };
        match self {
            Expectation::Connected { device } => for_devices(device, &|d| rules::connected(log, d)),
            Expectation::Recovers { device, within } => {
                for_devices(device, &|d| rules::recovers(log, d, *within))
            }
            Expectation::RenewsToken { device } => {
                for_devices(device, &|d| rules::renews_token(log, d))
            }
            Expectation::Backoff {
                device,
                first_at_most,
                cap,
                growth,
                jitter,
            } => {
                let def = BackoffRule::default();
                let rule = BackoffRule {
                    first_at_most: first_at_most.unwrap_or(def.first_at_most),
                    cap: cap.unwrap_or(def.cap),
                    growth: growth.unwrap_or(def.growth),
                    jitter: jitter.unwrap_or(def.jitter),
                };
                for_devices(device, &|d| rules::backoff(log, d, rule))
            }
            Expectation::NoTightLoop { device, min_gap } => {
                let gap = min_gap.unwrap_or(Duration::from_millis(100));
                for_devices(device, &|d| rules::no_tight_loop(log, d, gap))
            }
            Expectation::FleetSpread {
                max_per_second,
                min_spread,
            } => vec![rules::fleet_spread(log, *max_per_second, *min_spread)],
            Expectation::NoMessageLoss {
                device,
                by,
                max_duplicates,
                ordered,
            } => {
                let rule = LossRule {
                    by: *by,
                    max_duplicates: *max_duplicates,
                    ordered: *ordered,
                };
                for_devices(device, &|d| rules::no_message_loss(log, d, rule))
            }
            Expectation::Resubscribes { device, within } => {
                let w = within.unwrap_or(Duration::from_secs(30));
                for_devices(device, &|d| rules::resubscribes(log, d, w))
            }
            Expectation::GracefulDisconnect { device } => {
                for_devices(device, &|d| rules::graceful_disconnect(log, d))
            }
            Expectation::Keepalive { device, min, max } => {
                let (lo, hi) = (min.unwrap_or(1), max.unwrap_or(1177));
                for_devices(device, &|d| rules::keepalive(log, d, lo, hi))
            }
            Expectation::Records {
                code,
                device,
                fleet,
                count,
                min,
                max,
                at,
            } => {
                let rule = |device: Option<&str>| RecordRule {
                    code: *code,
                    device: device.map(str::to_owned),
                    count: *count,
                    min: *min,
                    max: *max,
                    at: at.map(|w| (w.at, w.tolerance)),
                };
                if *fleet && device.is_none() {
                    vec![rules::records(log, &rule(None))]
                } else {
                    for_devices(device, &|d| rules::records(log, &rule(Some(d))))
                }
            }
            Expectation::Method {
                device,
                name,
                status,
                within,
            } => {
                let (status, within) = (
                    status.unwrap_or(200),
                    within.unwrap_or(Duration::from_secs(30)),
                );
                for_devices(device, &|d| {
                    rules::method(log, d, name.as_deref(), status, within)
                })
            }
            Expectation::C2dDelivered {
                device,
                count,
                within,
            } => {
                let within = within.unwrap_or(Duration::from_secs(60));
                for_devices(device, &|d| rules::c2d_delivered(log, d, *count, within))
            }
            Expectation::DesiredApplied { device, within } => {
                let within = within.unwrap_or(Duration::from_secs(60));
                for_devices(device, &|d| rules::desired_applied(log, d, within))
            }
            Expectation::Provisions { device, within } => {
                for_devices(device, &|d| rules::provisions(log, d, *within))
            }
            Expectation::HonoursRetryAfter {
                device,
                polling,
                tolerance,
            } => {
                let tolerance = tolerance.unwrap_or(Duration::from_millis(100));
                for_devices(device, &|d| {
                    rules::honours_retry_after(log, d, *polling, tolerance)
                })
            }
            Expectation::ReprovisionsAfter {
                device,
                failures,
                within,
            } => {
                let (failures, within) = (
                    failures.unwrap_or(3),
                    within.unwrap_or(Duration::from_secs(120)),
                );
                for_devices(device, &|d| {
                    rules::reprovisions_after(log, d, failures, within)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_windows_and_yaml_shapes() {
        let w: TimeWindow = "65m ± 1m".parse().unwrap();
        assert_eq!(
            w,
            TimeWindow {
                at: Duration::from_secs(3900),
                tolerance: Duration::from_secs(60)
            }
        );
        let w: TimeWindow = "90s +- 2s".parse().unwrap();
        assert_eq!(w.tolerance, Duration::from_secs(2));
        assert!("soon ± 1m".parse::<TimeWindow>().is_err());
        let e: Expectation = serde_json::from_str(
            r#"{"records":{"code":404104,"device":"sensor-1","count":1,"at":"65m ± 1m"}}"#,
        )
        .unwrap();
        assert_eq!(e.name(), "records");
        let e: Expectation = serde_json::from_str(r#"{"recovers":{"within":"60s"}}"#).unwrap();
        assert_eq!(
            e,
            Expectation::Recovers {
                device: None,
                within: Duration::from_secs(60)
            }
        );
        assert!(serde_json::from_str::<Expectation>(r#"{"recovers":{"withn":"60s"}}"#).is_err());
    }
}
