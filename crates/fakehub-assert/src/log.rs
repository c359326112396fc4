//! The event log as the assertions read it: per-device views, virtual times relative to the start,
//! and excerpts that show a firmware engineer why a rule failed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fakehub::events::records;
use fakehub::events::{ClockMode, Connection, Lifecycle};
use fakehub::ResultCode;
use fakehub::{Event, EventKind};

/// A whole event log, in order, with its connections folded once.
#[derive(Debug, Clone)]
pub struct Log {
    events: Vec<Arc<Event>>,
    start: SystemTime,
    lifecycle: Arc<Lifecycle>,
    index: Arc<Index>,
    /// The Connections records, as the event each comes from and its result code.
    records: Arc<Vec<(usize, Option<ResultCode>)>>,
}

/// The hash of the index's tables: looked up once per event of a log of millions.
type Fast = foldhash::fast::RandomState;

/// Where each device's events and connections are, found once: rules judge every device of a
/// fleet, and a scan of the whole log per device would make judging a fleet quadratic.
#[derive(Debug, Default, PartialEq)]
struct Index {
    /// Positions in the log of each device's events.
    events: HashMap<Arc<str>, Vec<usize>, Fast>,
    /// Each device's connections that got as far as CONNECT, in order.
    connections: HashMap<Arc<str>, Vec<u64>, Fast>,
    /// The `timeline_ended` marker, else the last event (time and seq).
    end: Option<(SystemTime, u64)>,
}

/// Logs at least this long are read on two threads at once: the lifecycle fold on one, the
/// positions of each device's events on the other (for a fleet's log of millions of events each
/// pass takes seconds; a short log is not worth a thread).
const TWO_THREADS_FROM: usize = 100_000;

impl Index {
    /// The part that reads the events alone: each device's positions, and the end.
    fn positions(events: &[Arc<Event>]) -> Index {
        let mut index = Index::default();
        for (i, e) in events.iter().enumerate() {
            if let Some(d) = &e.device {
                match index.events.get_mut(d) {
                    Some(list) => list.push(i),
                    None => {
                        index.events.insert(d.clone(), vec![i]);
                    }
                }
            }
            if index.end.is_none() && matches!(e.kind, EventKind::TimelineEnded) {
                index.end = Some((e.time, e.seq));
            }
        }
        if index.end.is_none() {
            index.end = events.last().map(|e| (e.time, e.seq));
        }
        index
    }

    /// The part that reads the lifecycle: each device's connections.
    fn add_connections(&mut self, lifecycle: &Lifecycle) {
        for c in lifecycle.connections().filter(|c| c.connect.is_some()) {
            if let Some(d) = &c.device {
                match self.connections.get_mut(d) {
                    Some(list) => list.push(c.conn),
                    None => {
                        self.connections.insert(d.clone(), vec![c.conn]);
                    }
                }
            }
        }
    }
}

/// The connections and the records they cause, in one fold.
fn fold(events: &[Arc<Event>]) -> (Lifecycle, Vec<(usize, Option<ResultCode>)>) {
    let mut lifecycle = Lifecycle::new();
    let mut record_codes = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if let Some(c) = lifecycle.push(e) {
            record_codes.extend(records::facts(c, e).into_iter().map(|f| (i, f.code)));
        }
    }
    (lifecycle, record_codes)
}

impl Log {
    /// A log from events (e.g. `hub.events().snapshot()`, or a parsed `events.jsonl`).
    pub fn new(events: Vec<Arc<Event>>) -> Log {
        let two = events.len() >= TWO_THREADS_FROM;
        Log::build(events, two)
    }

    /// [`Log::new`], on two threads or one.
    fn build(events: Vec<Arc<Event>>, two_threads: bool) -> Log {
        let start = events
            .first()
            .map(|e| e.time)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let ((lifecycle, record_codes), mut index) = if two_threads {
            std::thread::scope(|scope| {
                let positions = scope.spawn(|| Index::positions(&events));
                let folded = fold(&events);
                // A panic on the other thread is this thread's (the same code run in line).
                match positions.join() {
                    Ok(index) => (folded, index),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            })
        } else {
            (fold(&events), Index::positions(&events))
        };
        index.add_connections(&lifecycle);
        Log {
            events,
            start,
            lifecycle: Arc::new(lifecycle),
            index: Arc::new(index),
            records: Arc::new(record_codes),
        }
    }

    /// Every connection, as the lifecycle fold tells it.
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// The connections of one device id (the device's own and its modules') that got as far as
    /// CONNECT, in order.
    pub fn connections_of<'a>(&'a self, device: &str) -> impl Iterator<Item = &'a Connection> + 'a {
        let ids = self.index.connections.get(device).map(Vec::as_slice);
        ids.unwrap_or_default()
            .iter()
            .filter_map(|c| self.lifecycle.get(*c))
    }

    /// When the run ended for the rules that judge "the end": the `timeline_ended` marker the
    /// runner writes before it stops the devices, else the last event (time and seq; the start
    /// and `u64::MAX` for an empty log).
    pub fn end(&self) -> (SystemTime, u64) {
        self.index.end.unwrap_or((self.start, u64::MAX))
    }

    /// The log of a running hub, as it is now.
    pub fn of(hub: &fakehub::HubHandle) -> Log {
        Log::new(hub.events_since(0))
    }

    /// The log of a running hub judged as of now: as if its timeline ended at this instant of its
    /// clock (rules that look at "the end of the run" look at now, even when nothing happened since
    /// the last event — e.g. after a jump of the clock).
    pub fn of_running(hub: &fakehub::HubHandle) -> Log {
        let mut events = hub.events_since(0);
        let clock = hub.clock();
        events.push(Arc::new(Event {
            seq: events.len() as u64,
            time: clock.now(),
            elapsed: clock.elapsed(),
            conn: None,
            device: None,
            module: None,
            hub: None,
            kind: EventKind::TimelineEnded,
        }));
        Log::new(events)
    }

    /// Parse `events.jsonl` text. Errors name the line.
    pub fn parse_jsonl(text: &str) -> Result<Log, String> {
        Log::read_jsonl(text.as_bytes())
    }

    /// Read `events.jsonl` line by line (a fleet's log need not fit in memory twice, as text and
    /// as events). Errors name the line.
    pub fn read_jsonl(mut reader: impl std::io::BufRead) -> Result<Log, String> {
        let mut events = Vec::new();
        let mut lines = fakehub::events::log::LineReader::new();
        let mut line = String::new();
        for n in 1.. {
            line.clear();
            let read = reader
                .read_line(&mut line)
                .map_err(|e| format!("line {n}: {e}"))?;
            if read == 0 {
                break;
            }
            if line.trim().is_empty() {
                continue;
            }
            let e = lines.parse(&line).map_err(|e| format!("line {n}: {e}"))?;
            events.push(Arc::new(e));
        }
        Ok(Log::new(events))
    }

    pub fn events(&self) -> &[Arc<Event>] {
        &self.events
    }

    /// Virtual wall time of the first event.
    pub fn start(&self) -> SystemTime {
        self.start
    }

    /// Time since the start of the log, `mm:ss.mmm` (or `h:mm:ss.mmm`).
    pub fn at(&self, t: SystemTime) -> String {
        fmt_offset(t.duration_since(self.start).unwrap_or_default())
    }

    /// Every device id that connected or tried to.
    pub fn devices(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.index.events.keys().map(|d| d.to_string()).collect();
        ids.sort();
        ids
    }

    /// How each device kept time, as the runner said when it started it (`device_clock` events;
    /// empty for a log written without a runner).
    pub fn clock_modes(&self) -> BTreeMap<String, ClockMode> {
        self.events
            .iter()
            .filter_map(|e| match (&e.kind, &e.device) {
                (EventKind::DeviceClock { mode }, Some(d)) => Some((d.to_string(), *mode)),
                _ => None,
            })
            .collect()
    }

    /// The events about one device (its client id's device part).
    pub fn of_device<'a>(&'a self, device: &str) -> impl Iterator<Item = &'a Arc<Event>> + 'a {
        let positions = self.index.events.get(device).map(Vec::as_slice);
        positions
            .unwrap_or_default()
            .iter()
            .filter_map(|i| self.events.get(*i))
    }

    /// The Connections records without their text: the event each comes from, with its result
    /// code (`None` for an `Information` record). Counted once, when the log is read.
    pub fn record_codes(&self) -> impl Iterator<Item = (&Event, Option<ResultCode>)> + '_ {
        self.records
            .iter()
            .filter_map(|(i, code)| self.events.get(*i).map(|e| (e.as_ref(), *code)))
    }

    /// Up to `n` events of `device` before and after position `seq`, one line each. With
    /// `messages` false only connection-level events (connects, closes, faults) are shown.
    pub fn excerpt(&self, device: Option<&str>, seq: u64, n: usize, messages: bool) -> Vec<String> {
        let shown = |e: &Event| -> bool {
            let about = device.is_none()
                || e.device.as_deref() == device
                || matches!(e.kind, EventKind::Fault { .. });
            let noise = matches!(
                e.kind,
                EventKind::Ping
                    | EventKind::Pingresp
                    | EventKind::Tls { .. }
                    | EventKind::Accepted { .. }
                    | EventKind::ConnectedDevices { .. }
            );
            let packet = matches!(
                e.kind,
                EventKind::Publish { .. }
                    | EventKind::Puback { .. }
                    | EventKind::Subscribe { .. }
                    | EventKind::Suback { .. }
            );
            e.seq == seq || (about && !noise && (messages || !packet))
        };
        let relevant: Vec<&Arc<Event>> = self.events.iter().filter(|e| shown(e)).collect();
        let pos = relevant
            .iter()
            .position(|e| e.seq >= seq)
            .unwrap_or(relevant.len());
        let from = pos.saturating_sub(n);
        let to = (pos + n + 1).min(relevant.len());
        relevant[from..to]
            .iter()
            .map(|e| {
                let mark = if e.seq == seq { "▶" } else { " " };
                format!("{mark} {} {}", self.at(e.time), describe(e))
            })
            .collect()
    }
}

/// One line for an event, as a person reads it.
pub fn describe(e: &Event) -> String {
    let who = match (&e.device, &e.module) {
        (Some(d), Some(m)) => format!("{d}/{m}"),
        (Some(d), None) => d.to_string(),
        _ => "hub".to_owned(),
    };
    let what = match &e.kind {
        EventKind::Connect {
            keep_alive,
            clean_session,
            ..
        } => {
            format!("CONNECT (keep-alive {keep_alive}s, clean {clean_session})")
        }
        EventKind::Connack {
            code,
            session_present,
            result,
            reason,
        } => match result {
            Some(r) => format!("CONNACK {code} ({r}: {})", reason.as_deref().unwrap_or("")),
            None => format!("CONNACK {code} (session present {session_present})"),
        },
        EventKind::Publish {
            dir,
            message_id,
            qos,
            dup,
            ..
        } => format!(
            "PUBLISH {} qos{qos}{} {}",
            if matches!(dir, fakehub::events::Direction::In) {
                "←"
            } else {
                "→"
            },
            if *dup { " DUP" } else { "" },
            message_id.as_deref().unwrap_or("")
        ),
        EventKind::Puback { dir, pkid } => format!(
            "PUBACK {} {pkid}",
            if matches!(dir, fakehub::events::Direction::In) {
                "←"
            } else {
                "→"
            }
        ),
        EventKind::Closed {
            by,
            how,
            cause,
            detail,
            ..
        } => format!(
            "closed by {by:?} ({how:?}, {cause:?}){}",
            detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        ),
        EventKind::Fault { action, fault, .. } => format!("fault {fault} {action:?}"),
        EventKind::DeviceProcess {
            action,
            code,
            signal,
        } => match (code, signal) {
            (_, Some(s)) => format!("device process {action} (signal {s})"),
            (Some(c), None) => format!("device process {action} (exit status {c})"),
            (None, None) => format!("device process {action}"),
        },
        EventKind::TwinUpdated {
            section,
            version,
            acknowledges,
        } => format!(
            "twin {section:?} $version {version}{}",
            acknowledges
                .map(|v| format!(" (acknowledges desired {v})"))
                .unwrap_or_default()
        ),
        EventKind::MethodResult {
            name,
            status,
            result,
            ..
        } => match (status, result) {
            (_, Some(r)) => format!("method {name}: {r}"),
            (Some(s), None) => format!("method {name}: status {s}"),
            (None, None) => format!("method {name}"),
        },
        EventKind::DpsConnect(d) => format!("DPS CONNECT (scope {})", d.id_scope),
        EventKind::DpsConnack { code, reason, .. } => match reason {
            Some(r) => format!("DPS CONNACK {code} ({r})"),
            None => format!("DPS CONNACK {code}"),
        },
        EventKind::DpsRequest { op, .. } => match op {
            fakehub::events::DpsOp::Register => "DPS register".to_owned(),
            fakehub::events::DpsOp::Poll => "DPS poll".to_owned(),
        },
        EventKind::DpsResponse(r) => {
            let fakehub::events::DpsResponse {
                status,
                retry_after,
                registration,
                assigned_hub,
                message,
                ..
            } = r.as_ref();
            let mut s = format!("DPS answer {status}");
            if let Some(r) = registration {
                s.push_str(&format!(" {r}"));
            }
            if let Some(h) = assigned_hub {
                s.push_str(&format!(" to {h}"));
            }
            if let Some(m) = message {
                s.push_str(&format!(": {m}"));
            }
            if let Some(ra) = retry_after {
                s.push_str(&format!(" (retry-after {ra}s)"));
            }
            s
        }
        other => {
            let v = serde_json::to_value(other).unwrap_or_default();
            v.get("event")
                .and_then(|e| e.as_str())
                .unwrap_or("event")
                .to_owned()
        }
    };
    format!("{who:<12} {what}")
}

/// `m:ss.mmm` or `h:mm:ss.mmm`.
pub fn fmt_offset(d: Duration) -> String {
    let ms = d.as_millis();
    let (h, m, s, ms) = (
        ms / 3_600_000,
        (ms / 60_000) % 60,
        (ms / 1000) % 60,
        ms % 1000,
    );
    if h > 0 {
        format!("{h}:{m:02}:{s:02}.{ms:03}")
    } else {
        format!("{m:02}:{s:02}.{ms:03}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `events.jsonl` lines of `devices` devices that connect, ping and are dropped, `rounds` times,
    /// then the timeline's end.
    fn fleet_log(devices: u64, rounds: u64) -> String {
        let mut out = String::new();
        let mut seq = 0u64;
        let mut line = |out: &mut String, ms: u64, body: &str| {
            out.push_str(&format!(
                "{{\"seq\":{seq},\"time\":\"2026-12-03T12:{:02}:{:02}.{:03}Z\",\"elapsed_ms\":{ms},{body}}}\n",
                ms / 60_000,
                ms / 1000 % 60,
                ms % 1000
            ));
            seq += 1;
        };
        for r in 0..rounds {
            for d in 0..devices {
                let conn = r * devices + d + 1;
                let ms = r * 60_000 + d;
                let who = format!("\"conn\":{conn},\"device\":\"meter-{d}\"");
                line(
                    &mut out,
                    ms,
                    &format!("\"conn\":{conn},\"event\":\"accepted\",\"peer\":\"127.0.0.1:1\""),
                );
                line(&mut out, ms, &format!("{who},\"event\":\"connect\",\"client_id\":\"meter-{d}\",\"username\":\"h/meter-{d}/?api-version=2021-04-12\",\"keep_alive\":60,\"clean_session\":false,\"auth\":\"sas\",\"will\":false"));
                line(
                    &mut out,
                    ms,
                    &format!("{who},\"event\":\"connack\",\"code\":0,\"session_present\":false"),
                );
                line(&mut out, ms + 1, &format!("{who},\"event\":\"ping\""));
                line(&mut out, ms + 1, &format!("{who},\"event\":\"pingresp\""));
                line(&mut out, ms + 2, &format!("{who},\"event\":\"closed\",\"by\":\"hub\",\"how\":\"rst\",\"cause\":\"fault\",\"detail\":\"fault 1 (mass_drop)\""));
            }
        }
        line(&mut out, rounds * 60_000, "\"event\":\"timeline_ended\"");
        out
    }

    /// A long log is folded and indexed on two threads: the result is the one thread's, field for
    /// field (and the log is long enough for [`Log::new`] to take the two-thread path).
    #[test]
    fn two_threads_build_the_same_log_as_one() {
        let text = fleet_log(2_000, 9);
        let one = Log::parse_jsonl(&text).expect("the log parses");
        let events = one.events().to_vec();
        assert!(events.len() >= TWO_THREADS_FROM, "{} events", events.len());
        let two = Log::build(events.clone(), true);
        let single = Log::build(events, false);
        assert_eq!(*two.index, *single.index);
        assert_eq!(two.records, single.records);
        assert_eq!(
            two.lifecycle.connections().collect::<Vec<_>>(),
            single.lifecycle.connections().collect::<Vec<_>>()
        );
        // And what was read is right: every device connected 9 times, each drop a record.
        assert_eq!(two.connections_of("meter-1999").count(), 9);
        assert_eq!(two.of_device("meter-0").count(), 9 * 5);
        assert_eq!(two.end().1, 2_000 * 9 * 6);
        assert!(two.record_codes().count() >= 2_000 * 9);
    }
}
