//! One scenario per finding, in the scenario format of `scenarios/`: in-process sample devices (no
//! `run:`), the measured parameters, the expectations a device with the defect fails, and a comment
//! header that cites the field evidence, the seed and the `--sample-bug` that shows the defect.

use std::fmt::Write as _;

use crate::diagnose::{Finding, HubDiagnosis, Pattern};
use crate::time::human;

/// The seed written into every scenario (fault selection by percentage, device jitter).
pub const SEED: u64 = 7;
/// The largest fleet a written scenario runs (a reproduction needs the shape, not the size).
pub const MAX_FLEET: usize = 50;

/// A written scenario.
#[derive(Debug, Clone)]
pub struct Written {
    pub name: String,
    pub file_name: String,
    pub yaml: String,
    /// The sample-device bug that makes it fail, if any does.
    pub bug: Option<&'static str>,
    /// What the scenario reproduces and what it simplifies.
    pub notes: Vec<String>,
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"device\"".into())
}

/// A device id usable in a scenario (the field's own when it is one).
fn device_id(f: &Finding) -> String {
    f.devices
        .iter()
        .find(|d| {
            !d.is_empty()
                && !d.contains(['/', '+', '#', '\n', '\r'])
                && d.len() <= 128
                && !d.starts_with(char::is_whitespace)
        })
        .cloned()
        .unwrap_or_else(|| "sensor-1".into())
}

/// A duration as the scenario format reads it (`65m`, `90s`, `29m27s`).
fn dur(ms: i64) -> String {
    let s = (ms.max(0) + 500) / 1000;
    if s == 0 {
        "0s".into()
    } else if s % 60 == 0 {
        format!("{}m", s / 60)
    } else if s > 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// A fleet's id prefix from a field device id (`meter-17` → `meter`).
fn fleet_prefix(dev: &str) -> String {
    let s = slug(dev);
    let s = s.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
    let s: String = s.chars().take(24).collect();
    if s.is_empty() {
        "device".into()
    } else {
        s
    }
}

fn round_up_minute(ms: i64) -> i64 {
    ((ms.max(0) + 59_999) / 60_000) * 60_000
}

fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_owned()
}

fn header(out: &mut String, hub: &HubDiagnosis, f: &Finding, bug: Option<&str>, file: &str) {
    let _ = writeln!(out, "# Reproduces a field finding: {}", f.title);
    let hub_name = if hub.hub.is_empty() {
        "(unnamed)"
    } else {
        &hub.hub
    };
    let _ = writeln!(
        out,
        "# Field: hub {hub_name}, {} to {}.",
        crate::time::format(hub.first),
        crate::time::format(hub.last)
    );
    for d in &f.details {
        let _ = writeln!(out, "#   {d}");
    }
    let shown: Vec<String> = f.evidence.iter().take(6).map(|s| s.to_string()).collect();
    let _ = writeln!(
        out,
        "# Evidence ({} records): {}{}",
        f.evidence.len(),
        shown.join(", "),
        if f.evidence.len() > shown.len() {
            ", …"
        } else {
            ""
        }
    );
    let ids: Vec<&str> = f.devices.iter().take(5).map(String::as_str).collect();
    let _ = writeln!(
        out,
        "# Field devices: {} ({}{}); sdkVersion: {}",
        f.devices.len(),
        ids.join(", "),
        if f.devices.len() > ids.len() {
            ", …"
        } else {
            ""
        },
        if f.sdks.is_empty() {
            "not in the records".to_owned()
        } else {
            f.sdks.join(", ")
        }
    );
    let _ = writeln!(out, "# Guide: {}", f.cause);
    let _ = writeln!(out, "# The log cannot tell apart: {}.", f.cannot_tell);
    let _ = writeln!(
        out,
        "# Seed: {SEED}. The sample device stands in for the field devices."
    );
    match bug {
        Some(b) => {
            let _ = writeln!(
                out,
                "# Shows the defect: fakehub run {file} --sample-bug {b}  (exit 1); the well-behaved sample device passes (exit 0)."
            );
        }
        None => {
            let _ = writeln!(
                out,
                "# No sample-device bug has this defect: the scenario checks that a device recovers from it."
            );
        }
    }
}

/// The scenario for finding `index` of `hub`.
pub fn write(hub: &HubDiagnosis, index: usize) -> Option<Written> {
    let f = hub.findings.get(index)?;
    let prefix = if hub.hub.is_empty() {
        "field".to_owned()
    } else {
        slug(&hub.hub)
    };
    let dev = device_id(f);
    let qd = q(&dev);
    let mut notes = Vec::new();
    let mut body = String::new();
    let (name_tail, bug, description) = match &f.pattern {
        Pattern::TokenExpiry { period_ms, .. } => {
            let sixty = 60 * 60_000;
            let grace = (period_ms - sixty).clamp(0, 10 * 60_000);
            let grace = (grace + 500) / 1000 * 1000;
            if (period_ms - sixty - grace).abs() > 30_000 {
                notes.push(format!(
                    "the sample device's token lives 60 minutes: the field period {} is written as 60m + {} of grace",
                    human(*period_ms),
                    human(grace)
                ));
            }
            let drop_at = sixty + grace;
            let _ = write!(
                body,
                "hub:\n  token_grace: {}\ndevices:\n  - id: {qd}\ntimeline:\n  - advance: {}      # to a minute before the drop\n  - wait: 2m          # let time flow across it\n  - advance: 60m      # and through the next token\nexpect:\n  - renews_token: {{ device: {qd} }}\n  - records: {{ code: 404104, device: {qd}, count: 0 }}\n  - recovers: {{ device: {qd}, within: 60s }}\n",
                dur(grace),
                dur(drop_at - 60_000)
            );
            (
                format!("token-expiry-{}m", (period_ms + 30_000) / 60_000),
                Some("no-token-renewal"),
                format!(
                    "Drops every {} (401003 then 404104): a token that is not renewed",
                    human(*period_ms)
                ),
            )
        }
        Pattern::IdleTimeout { session_ms, .. } => {
            let wait = round_up_minute(session_ms + 90_000);
            let _ = write!(
                body,
                "devices:\n  - id: {qd}\n    telemetry_interval: 2h   # quiet, as the field device was\ntimeline:\n  - wait: {}\nexpect:\n  - keepalive: {{ device: {qd} }}\n  - records: {{ code: 404104, device: {qd}, count: 0 }}\n  - connected: {{ device: {qd} }}\n",
                dur(wait)
            );
            (
                "keepalive-idle-timeout".to_owned(),
                Some("huge-keepalive"),
                format!(
                    "404104 after {} idle: a keep-alive the hub caps",
                    human(*session_ms)
                ),
            )
        }
        Pattern::RandomDrops { .. } | Pattern::Periodic { .. } => {
            let (drops, spacing, not_back) = match &f.pattern {
                Pattern::RandomDrops {
                    drops,
                    interval_ms,
                    not_reconnected,
                    ..
                } => (*drops, interval_ms.unwrap_or(10 * 60_000), *not_reconnected),
                Pattern::Periodic { period_ms, drops } => (*drops, *period_ms, 0),
                _ => (1, 10 * 60_000, 0),
            };
            let per_device = (drops.saturating_sub(not_back)).div_ceil(f.devices.len().max(1));
            let resets = per_device.clamp(1, 3);
            let spacing = round_up_minute(spacing).clamp(2 * 60_000, 30 * 60_000);
            if drops > resets {
                notes.push(format!(
                    "{drops} field drops are written as {resets} reset(s) {} apart",
                    human(spacing)
                ));
            }
            let _ = write!(
                body,
                "devices:\n  - id: {qd}\ntimeline:\n  - advance: 10m\n"
            );
            for _ in 0..resets {
                let _ = write!(
                    body,
                    "  - fault: {{ type: reset, devices: {{ ids: [{qd}] }} }}\n  - wait: 1m\n  - advance: {}\n",
                    dur(spacing - 60_000)
                );
            }
            let _ = write!(
                body,
                "  - stop: {{ device: {qd} }}\nexpect:\n  - recovers: {{ device: {qd}, within: 60s }}\n  - graceful_disconnect: {{ device: {qd} }}\n  - records: {{ code: 404104, device: {qd}, count: {resets} }}\n"
            );
            (
                if matches!(f.pattern, Pattern::Periodic { .. }) {
                    format!("periodic-drops-{}", dur(spacing))
                } else {
                    "random-drops".to_owned()
                },
                Some("no-disconnect"),
                "404104 without DISCONNECT: a reset the device must recover from, and a stop that must say DISCONNECT".to_owned(),
            )
        }
        Pattern::AuthLoop { .. } => {
            let _ = write!(
                body,
                "hub:\n  token_grace: 5m\ndevices:\n  - id: {qd}\ntimeline:\n  - advance: 64m\n  - wait: 2m\n  - advance: 10m\nexpect:\n  - renews_token: {{ device: {qd} }}\n  - recovers: {{ device: {qd}, within: 60s }}\n  - connected: {{ device: {qd} }}\n"
            );
            notes.push(
                "the refusals are reproduced as a device that keeps presenting its expired token (a skewed clock or a rotated key give the same 401003)".into(),
            );
            (
                "auth-loop".to_owned(),
                Some("stale-token"),
                "Connects refused with 401003 again and again: a credential the hub refuses"
                    .to_owned(),
            )
        }
        Pattern::ReconnectStorm { span_ms, codes, .. }
        | Pattern::HubErrors { span_ms, codes, .. } => {
            let outage = round_up_minute(*span_ms).clamp(60_000, 15 * 60_000);
            let mode = if codes.contains_key(&500001) || codes.is_empty() {
                "connack3"
            } else {
                "hang"
            };
            let _ = write!(
                body,
                "devices:\n  - id: {qd}\ntimeline:\n  - advance: 5m\n  - fault: {{ type: outage, mode: {mode}, duration: {} }}\n  - fault: {{ type: reset, devices: {{ ids: [{qd}] }} }}\n  - wait: 30s\n  - advance: {}\n  - wait: 90s\nexpect:\n  - no_tight_loop: {{ device: {qd}, min_gap: 200ms }}\n  - recovers: {{ device: {qd}, within: {} }}\n  - connected: {{ device: {qd} }}\n",
                dur(outage),
                dur(outage),
                dur(outage + 2 * 60_000)
            );
            notes.push(
                "the drop is written as a reset (the log cannot tell it from a crash; in-process devices do not crash)".into(),
            );
            (
                if matches!(f.pattern, Pattern::ReconnectStorm { .. }) {
                    "reconnect-storm".to_owned()
                } else {
                    "hub-errors".to_owned()
                },
                Some("no-backoff"),
                format!(
                    "Connects refused for {} after a drop: the device must back off",
                    human(outage)
                ),
            )
        }
        Pattern::FleetBurst {
            dropped,
            fleet,
            connect_codes,
            outage_ms,
            storm_devices,
            ..
        } => {
            let n = (*fleet).clamp(3, MAX_FLEET);
            if *fleet > MAX_FLEET {
                notes.push(format!(
                    "the field fleet of {fleet} is written as {MAX_FLEET} devices with the same share dropped"
                ));
            }
            let share = (*dropped as f64 / (*fleet).max(1) as f64).min(1.0);
            let selector = if share >= 0.95 {
                "all".to_owned()
            } else {
                format!("{{ percent: {} }}", ((share * 100.0).round() as u32).max(1))
            };
            let hit = ((n as f64 * share).round() as usize).max(1);
            let server = connect_codes.keys().any(|c| (500000..600000).contains(c));
            let outage = if server {
                round_up_minute(*outage_ms).clamp(60_000, 10 * 60_000)
            } else {
                0
            };
            let mode = if connect_codes.contains_key(&500001) || !server {
                "connack3"
            } else {
                "hang"
            };
            let _ = write!(
                body,
                "seed: {SEED}\ndevices:\n  - id: {}\n    count: {n}\n    telemetry_interval: 5m\ntimeline:\n  - advance: 5m\n",
                q(&fleet_prefix(&dev))
            );
            if outage > 0 {
                let _ = writeln!(
                    body,
                    "  - fault: {{ type: outage, mode: {mode}, duration: {} }}",
                    dur(outage)
                );
            }
            let _ = write!(
                body,
                "  - fault: {{ type: mass_drop, rst: true, devices: {selector} }}\n  - wait: 30s\n  - advance: {}\n  - wait: 90s\nexpect:\n  - records: {{ code: 404104, fleet: true, min: {hit} }}\n",
                dur(outage.max(60_000))
            );
            if outage > 0 && mode == "connack3" {
                let _ = writeln!(
                    body,
                    "  - records: {{ code: 500001, fleet: true, min: {hit} }}"
                );
            }
            let _ = write!(
                body,
                "  - recovers: {{ within: {} }}\n  - fleet_spread: {{ max_per_second: {}, min_spread: 10s }}\n",
                dur(outage + 2 * 60_000),
                (hit * 2).div_ceil(5).max(3)
            );
            (
                "fleet-burst".to_owned(),
                Some(if *storm_devices > 0 {
                    "no-backoff"
                } else {
                    "no-jitter"
                }),
                format!(
                    "{dropped} of {fleet} devices dropped at once{}: the fleet must come back spread out",
                    if server { " with 500xxx" } else { "" }
                ),
            )
        }
        Pattern::Takeover { count, interval_ms } => {
            let per_device = count.div_ceil(f.devices.len().max(1)).clamp(1, 3);
            let spacing =
                round_up_minute(interval_ms.unwrap_or(5 * 60_000)).clamp(2 * 60_000, 30 * 60_000);
            let _ = write!(body, "devices:\n  - id: {qd}\ntimeline:\n  - advance: 5m\n");
            for _ in 0..per_device {
                let _ = write!(
                    body,
                    "  - fault: {{ type: takeover, devices: {{ ids: [{qd}] }} }}\n  - wait: 1m\n  - advance: {}\n",
                    dur(spacing - 60_000)
                );
            }
            let _ = write!(
                body,
                "expect:\n  - records: {{ code: 400027, device: {qd}, count: {per_device} }}\n  - recovers: {{ device: {qd}, within: 60s }}\n  - connected: {{ device: {qd} }}\n"
            );
            notes.push(
                "a takeover is the hub closing the device's connection for a second one with its identity; the fix is one identity per device".into(),
            );
            (
                "takeover".to_owned(),
                None,
                "Connections closed with 400027: another connection took the identity".to_owned(),
            )
        }
        Pattern::Throttling {
            admitted_per_second,
            ..
        } => {
            let n = f.devices.len().clamp(10, MAX_FLEET);
            let per_second = (admitted_per_second.floor() as u32).clamp(1, 100);
            let _ = write!(
                body,
                "seed: {SEED}\ndevices:\n  - id: meter\n    count: {n}\n    telemetry_interval: 5m\ntimeline:\n  - advance: 5m\n  - fault: {{ type: throttle, per_second: {per_second}, duration: 5m }}\n  - fault: {{ type: mass_drop, rst: true, devices: all }}\n  - wait: 30s\n  - advance: 5m\n  - wait: 90s\nexpect:\n  - recovers: {{ within: 7m }}\n"
            );
            notes.push(
                "the hub's throttle spaces the reconnects itself, so no sample-device bug is shown here; the scenario checks the fleet gets back through it".into(),
            );
            (
                "throttling".to_owned(),
                None,
                format!(
                    "Connects throttled (429xxx) at {per_second} admitted a second: the fleet must not reconnect at once"
                ),
            )
        }
    };
    let name = format!("{prefix}-{name_tail}");
    let file_name = format!("{name}.yaml");
    let mut yaml = String::new();
    header(&mut yaml, hub, f, bug, &file_name);
    for n in &notes {
        let _ = writeln!(yaml, "# Simplified: {n}.");
    }
    let _ = writeln!(yaml, "name: {}", q(&name));
    let _ = writeln!(yaml, "description: {}", q(&description));
    yaml.push_str(&body);
    Some(Written {
        name,
        file_name,
        yaml,
        bug,
        notes,
    })
}

/// Every finding's scenario; names made unique when two findings share one.
pub fn write_all(hub: &HubDiagnosis) -> Vec<Written> {
    let mut out: Vec<Written> = Vec::new();
    for i in 0..hub.findings.len() {
        if let Some(mut w) = write(hub, i) {
            let mut k = 2;
            while out.iter().any(|o| o.name == w.name) {
                let base = w
                    .name
                    .trim_end_matches(char::is_numeric)
                    .trim_end_matches('-');
                let new = format!("{base}-{k}");
                w.yaml = w
                    .yaml
                    .replace(
                        &format!("name: {}", q(&w.name)),
                        &format!("name: {}", q(&new)),
                    )
                    .replace(&w.file_name, &format!("{new}.yaml"));
                w.file_name = format!("{new}.yaml");
                w.name = new;
                k += 1;
            }
            out.push(w);
        }
    }
    out
}
