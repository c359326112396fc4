//! The event log: every event in order, in memory and (with an output directory) as JSON Lines,
//! with the Connections records derived alongside.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use super::{dps_records, records};
use super::{Event, EventKind, Stamp, Subject};
use crate::clock::VirtualClock;

/// Where the log also goes, as it happens.
struct Sinks {
    events: Option<Box<dyn Write + Send>>,
    records: Option<(Box<dyn Write + Send>, records::RecordDeriver)>,
    dps: Option<(Box<dyn Write + Send>, dps_records::DpsRecordDeriver)>,
}

struct LogState {
    events: Vec<Arc<Event>>,
    sinks: Sinks,
    /// The first write error (kind and text: an `io::Error` is not `Clone`).
    write_error: Option<(std::io::ErrorKind, String)>,
}

/// The event log of one hub (or of several hubs of one run, each writing through a handle tagged
/// with its name). Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<LogInner>,
    /// Stamped on every event written through this handle.
    hub: Option<Arc<str>>,
}

struct LogInner {
    clock: VirtualClock,
    state: Mutex<LogState>,
    appended: Notify,
    /// Connection ids, unique across every hub writing this log.
    next_conn: std::sync::atomic::AtomicU64,
}

impl EventLog {
    pub fn new(clock: VirtualClock) -> Self {
        EventLog {
            inner: Arc::new(LogInner {
                clock,
                state: Mutex::new(LogState {
                    events: Vec::new(),
                    sinks: Sinks {
                        events: None,
                        records: None,
                        dps: None,
                    },
                    write_error: None,
                }),
                appended: Notify::new(),
                next_conn: std::sync::atomic::AtomicU64::new(1),
            }),
            hub: None,
        }
    }

    /// The same log, written through a handle that stamps `hub` on every event (several hubs of
    /// one run share a log this way).
    pub fn tagged(&self, hub: &str) -> EventLog {
        EventLog {
            inner: self.inner.clone(),
            hub: Some(Arc::from(hub)),
        }
    }

    /// The clock the log stamps events with.
    pub fn clock(&self) -> &VirtualClock {
        &self.inner.clock
    }

    /// A new connection id (unique in this log, whichever hub asks).
    pub fn next_conn(&self) -> u64 {
        self.inner
            .next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Also write every event (JSON Lines) and the Connections records derived from them.
    pub fn write_to(
        &self,
        events: Box<dyn Write + Send>,
        records: Box<dyn Write + Send>,
        context: records::RecordContext,
    ) {
        let mut s = self.lock();
        s.sinks.events = Some(events);
        s.sinks.records = Some((records, records::RecordDeriver::new(context)));
    }

    /// Also write the Device Provisioning Service's diagnostic records derived from the events.
    pub fn write_dps_to(&self, records: Box<dyn Write + Send>, context: dps_records::DpsContext) {
        self.lock().sinks.dps = Some((records, dps_records::DpsRecordDeriver::new(context)));
    }

    /// Append an event stamped with the clock's current readings.
    pub fn emit(&self, subject: &Subject, kind: EventKind) -> Arc<Event> {
        self.emit_stamped(subject, kind, Stamp::Now)
    }

    /// Append an event that happened at virtual wall time `time` (a wall deadline that fired: its
    /// records carry the deadline, not the moment the task got to run).
    pub fn emit_at(&self, subject: &Subject, kind: EventKind, time: SystemTime) -> Arc<Event> {
        self.emit_stamped(subject, kind, Stamp::Wall(time))
    }

    /// Append an event with an explicit stamp.
    pub fn emit_stamped(&self, subject: &Subject, kind: EventKind, stamp: Stamp) -> Arc<Event> {
        let now = self.inner.clock.now();
        let elapsed_now = self.inner.clock.elapsed();
        let (time, elapsed) = match stamp {
            Stamp::Now => (now, elapsed_now),
            Stamp::Wall(t) => {
                let late = now.duration_since(t).unwrap_or_default();
                (t, elapsed_now.saturating_sub(late))
            }
            Stamp::Elapsed(deadline) => {
                let late = elapsed_now.saturating_sub(deadline);
                (now - late, deadline.min(elapsed_now))
            }
        };
        let mut s = self.lock();
        let event = Arc::new(Event {
            seq: s.events.len() as u64,
            time,
            elapsed,
            conn: subject.conn,
            device: subject.device.clone(),
            module: subject.module.clone(),
            hub: self.hub.as_deref().map(str::to_owned),
            kind,
        });
        s.events.push(event.clone());
        let state = &mut *s;
        if let Err(e) = write_sinks(&mut state.sinks, &event) {
            state.write_error.get_or_insert((e.kind(), e.to_string()));
        }
        drop(s);
        self.inner.appended.notify_waiters();
        event
    }

    /// A copy of every event so far.
    pub fn snapshot(&self) -> Vec<Arc<Event>> {
        self.lock().events.clone()
    }

    /// How many events so far.
    pub fn len(&self) -> usize {
        self.lock().events.len()
    }

    /// Whether nothing happened yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A stream of every event from the beginning, then live ones; it never misses one.
    pub fn stream(&self) -> EventStream {
        EventStream {
            log: self.clone(),
            next: 0,
        }
    }

    /// Flush the output files. Returns the first write error seen, if any.
    pub fn flush(&self) -> std::io::Result<()> {
        let mut s = self.lock();
        let state = &mut *s;
        let writers = [
            state.sinks.events.as_mut(),
            state.sinks.records.as_mut().map(|(w, _)| w),
            state.sinks.dps.as_mut().map(|(w, _)| w),
        ];
        for w in writers.into_iter().flatten() {
            if let Err(e) = w.flush() {
                state.write_error.get_or_insert((e.kind(), e.to_string()));
            }
        }
        match &s.write_error {
            Some((kind, text)) => Err(std::io::Error::new(*kind, text.clone())),
            None => Ok(()),
        }
    }
}

/// Write one event (and its records) as whole lines, flushed, so a reader tailing the files of a
/// long-running hub sees every event as it happens and never half a line.
fn write_sinks(sinks: &mut Sinks, event: &Event) -> std::io::Result<()> {
    if let Some(w) = sinks.events.as_mut() {
        serde_json::to_writer(&mut *w, event)?;
        w.write_all(b"\n")?;
        w.flush()?;
    }
    if let Some((w, deriver)) = sinks.records.as_mut() {
        write_lines(w, &deriver.push(event))?;
    }
    if let Some((w, deriver)) = sinks.dps.as_mut() {
        write_lines(w, &deriver.push(event))?;
    }
    Ok(())
}

/// Write derived records, one JSON object a line, flushed when there were any.
fn write_lines<T: serde::Serialize>(
    w: &mut Box<dyn Write + Send>,
    items: &[T],
) -> std::io::Result<()> {
    for item in items {
        serde_json::to_writer(&mut **w, item)?;
        w.write_all(b"\n")?;
    }
    if !items.is_empty() {
        w.flush()?;
    }
    Ok(())
}

/// Reads the log in order, waiting for new events at the end.
pub struct EventStream {
    log: EventLog,
    next: usize,
}

impl EventStream {
    /// The next event, waiting for it if needed.
    pub async fn next(&mut self) -> Arc<Event> {
        loop {
            let notified = self.log.inner.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(e) = self.log.lock().events.get(self.next).cloned() {
                self.next += 1;
                return e;
            }
            notified.await;
        }
    }

    /// The next event if one is already in the log; never waits.
    pub fn try_next(&mut self) -> Option<Arc<Event>> {
        let e = self.log.lock().events.get(self.next).cloned()?;
        self.next += 1;
        Some(e)
    }

    /// Wait (up to `timeout` of real time) for an event that matches.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Option<Arc<Event>> {
        tokio::time::timeout(timeout, async {
            loop {
                let e = self.next().await;
                if pred(&e) {
                    return e;
                }
            }
        })
        .await
        .ok()
    }
}
