//! What a scenario may ask for: each limit keeps a run that `validate` accepts able to run to its
//! end on an ordinary machine (see docs/HARDENING.md). On failure: the text to locate in the file
//! and a message that gives the allowed range.

use std::time::Duration;

use super::{Scenario, Step};

/// The longest a timeline may let pass in all (`advance` and `wait` added up), and the longest any
/// one duration in the file may be: a month of virtual time.
pub const MAX_VIRTUAL_TIME: Duration = Duration::from_secs(31 * 24 * 3600);
/// The shortest `keepalive_cap`: a zero window would close every connection at once.
pub const MIN_KEEPALIVE_CAP: Duration = Duration::from_secs(1);
/// The shortest telemetry interval of an in-process sample device.
pub const MIN_TELEMETRY_INTERVAL: Duration = Duration::from_millis(1);
/// In-process devices a scenario may run: each costs memory (its task, the hub's connection and
/// session, buffers: about 35 KB; see docs/BENCH.md for a 100,000-device run), none costs a
/// descriptor.
pub const MAX_IN_PROCESS_DEVICES: usize = 100_000;
/// Device processes a scenario may run: each costs memory of its own and descriptors in the
/// runner, and more would not fit a machine's process and descriptor limits.
pub const MAX_PROCESS_DEVICES: usize = 256;
/// Descriptors the runner spends per device process (its connection, output pipes, pidfd).
pub const DESCRIPTORS_PER_PROCESS: u64 = 4;
/// Descriptors the runner keeps for itself (listener, files, runtime).
pub const DESCRIPTORS_RESERVED: u64 = 64;
/// The telemetry messages the in-process devices may send in one run (about a minute of work
/// each million).
pub const MAX_TELEMETRY_MESSAGES: u128 = 20_000_000;

/// The default telemetry interval of the sample device.
const DEFAULT_TELEMETRY_INTERVAL: Duration = Duration::from_secs(60);

type Refusal = (String, String);

/// A duration as a scenario would write it (whole days as `31days`, not `1month 13h 26m 24s`).
fn fmt(d: Duration) -> String {
    const DAY: u64 = 24 * 3600;
    if d.as_secs() >= DAY && d.as_secs().is_multiple_of(DAY) && d.subsec_nanos() == 0 {
        format!("{}days", d.as_secs() / DAY)
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// Fleet sizes, the timeline's length, keep-alive cap and telemetry rate.
pub(super) fn check(s: &Scenario) -> Result<(), Refusal> {
    let (mut in_process, mut processes) = (0usize, 0usize);
    for d in &s.devices {
        let n = d.count.unwrap_or(1);
        let total = if d.run.is_some() {
            &mut processes
        } else {
            &mut in_process
        };
        *total = total.saturating_add(n);
        if d.run.is_none() && *total > MAX_IN_PROCESS_DEVICES {
            return Err((
                d.id.clone(),
                format!(
                    "device `{}`: {} in-process devices in all; a scenario may run 1 to \
                     {MAX_IN_PROCESS_DEVICES} (each holds a session and buffers in memory)",
                    d.id, *total
                ),
            ));
        }
        if d.run.is_some() {
            let allowed = process_limit();
            if *total > allowed {
                return Err((
                    d.id.clone(),
                    format!(
                        "device `{}`: {} device processes in all; a scenario may run 1 to \
                         {allowed} (at most {MAX_PROCESS_DEVICES}, and {DESCRIPTORS_PER_PROCESS} \
                         file descriptors each within this machine's limit)",
                        d.id, *total
                    ),
                ));
            }
        }
    }
    let mut total = Duration::ZERO;
    for (i, step) in s.timeline.iter().enumerate() {
        if let Step::Advance(d) | Step::Wait(d) = step {
            total = total.saturating_add(*d);
            if total > MAX_VIRTUAL_TIME {
                return Err((
                    nth_step_word(s, i),
                    format!(
                        "the timeline lets {} pass by this step; a run may let 0s to {} pass in \
                         all (`advance` and `wait` added up)",
                        fmt(total),
                        fmt(MAX_VIRTUAL_TIME)
                    ),
                ));
            }
        }
    }
    if let Some(cap) = s.hub.keepalive_cap {
        if cap < MIN_KEEPALIVE_CAP {
            return Err((
                "keepalive_cap".into(),
                format!(
                    "`keepalive_cap: {}` would close every connection at once; it may be {} to {}",
                    fmt(cap),
                    fmt(MIN_KEEPALIVE_CAP),
                    fmt(MAX_VIRTUAL_TIME)
                ),
            ));
        }
    }
    let mut messages: u128 = 0;
    for d in s.devices.iter().filter(|d| d.run.is_none()) {
        let interval = d.telemetry_interval.unwrap_or(DEFAULT_TELEMETRY_INTERVAL);
        if interval < MIN_TELEMETRY_INTERVAL {
            return Err((
                "telemetry_interval".into(),
                format!(
                    "device `{}`: `telemetry_interval` may be {} to {}",
                    d.id,
                    fmt(MIN_TELEMETRY_INTERVAL),
                    fmt(MAX_VIRTUAL_TIME)
                ),
            ));
        }
        let each = total.as_nanos() / interval.as_nanos().max(1);
        messages = messages.saturating_add(each.saturating_mul(d.count.unwrap_or(1) as u128));
        if messages > MAX_TELEMETRY_MESSAGES {
            return Err((
                d.id.clone(),
                format!(
                    "the in-process devices would send about {messages} telemetry messages over \
                     the {} timeline; a run may send up to {MAX_TELEMETRY_MESSAGES} (fewer \
                     devices, a longer `telemetry_interval` or a shorter timeline)",
                    fmt(total)
                ),
            ));
        }
    }
    Ok(())
}

/// Device processes this machine can run: [`MAX_PROCESS_DEVICES`], or fewer when the hard
/// descriptor limit leaves less room.
pub fn process_limit() -> usize {
    let hard = fakehub::descriptors::limits().map_or(1024, |(_, hard)| hard);
    let by_descriptors = hard.saturating_sub(DESCRIPTORS_RESERVED) / DESCRIPTORS_PER_PROCESS;
    usize::try_from(by_descriptors)
        .unwrap_or(usize::MAX)
        .min(MAX_PROCESS_DEVICES)
}

/// The word that starts timeline step `i` (`advance` or `wait`), for locating it.
fn nth_step_word(s: &Scenario, i: usize) -> String {
    match s.timeline.get(i) {
        Some(Step::Wait(_)) => "wait".into(),
        _ => "advance".into(),
    }
}

/// Keys whose values are free text, never durations.
const FREE_TEXT: &[&str] = &[
    "name",
    "description",
    "id",
    "device",
    "devices",
    "body",
    "payload",
    "patch",
    "properties",
    "message_id",
    "run",
    "bugs",
    "host_name",
    "listen",
];

/// Every duration written in the file (a string humantime reads, under a key that is not free
/// text) is at most [`MAX_VIRTUAL_TIME`]: longer ones overflow the clock's arithmetic, and no run
/// could reach them.
pub(super) fn check_durations(value: &serde_norway::Value) -> Result<(), Refusal> {
    use serde_norway::Value;
    match value {
        Value::Mapping(m) => {
            for (k, v) in m {
                if k.as_str().is_some_and(|k| FREE_TEXT.contains(&k)) {
                    continue;
                }
                if let (Some(key), Value::String(text)) = (k.as_str(), v) {
                    if let Ok(d) = humantime::parse_duration(text) {
                        if d > MAX_VIRTUAL_TIME {
                            return Err((
                                text.clone(),
                                format!(
                                    "`{key}: {text}` is too long: a duration may be 0s to {}",
                                    fmt(MAX_VIRTUAL_TIME)
                                ),
                            ));
                        }
                    }
                }
                check_durations(v)?;
            }
            Ok(())
        }
        Value::Sequence(items) => items.iter().try_for_each(check_durations),
        Value::Tagged(t) => check_durations(&t.value),
        _ => Ok(()),
    }
}
