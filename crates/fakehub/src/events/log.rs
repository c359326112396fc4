//! The event log: every event in order, in memory and (with an output directory) as JSON Lines,
//! with the Connections records derived alongside.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use super::records;
use super::{Event, EventKind, Stamp, Subject};
use crate::clock::VirtualClock;

/// Where the log also goes, as it happens.
struct Sinks {
    events: Option<Box<dyn Write + Send>>,
    records: Option<(Box<dyn Write + Send>, records::RecordDeriver)>,
}

struct LogState {
    events: Vec<Arc<Event>>,
    sinks: Sinks,
    /// The first write error (kind and text: an `io::Error` is not `Clone`).
    write_error: Option<(std::io::ErrorKind, String)>,
}

/// The event log of one hub. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<LogInner>,
}

struct LogInner {
    clock: VirtualClock,
    state: Mutex<LogState>,
    appended: Notify,
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
                    },
                    write_error: None,
                }),
                appended: Notify::new(),
            }),
        }
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
        self.stream_from(0)
    }

    /// A stream of the events from position `seq` on, then live ones.
    pub fn stream_from(&self, seq: u64) -> EventStream {
        EventStream {
            log: self.clone(),
            next: usize::try_from(seq).unwrap_or(usize::MAX),
        }
    }

    /// The events from position `seq` on.
    pub fn since(&self, seq: u64) -> Vec<Arc<Event>> {
        let from = usize::try_from(seq).unwrap_or(usize::MAX);
        self.lock()
            .events
            .get(from..)
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    }

    /// Flush the output files. Returns the first write error seen, if any.
    pub fn flush(&self) -> std::io::Result<()> {
        let mut s = self.lock();
        if let Some(w) = s.sinks.events.as_mut() {
            if let Err(e) = w.flush() {
                s.write_error.get_or_insert((e.kind(), e.to_string()));
            }
        }
        if let Some((w, _)) = s.sinks.records.as_mut() {
            if let Err(e) = w.flush() {
                s.write_error.get_or_insert((e.kind(), e.to_string()));
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
        let records = deriver.push(event);
        for record in &records {
            serde_json::to_writer(&mut *w, record)?;
            w.write_all(b"\n")?;
        }
        if !records.is_empty() {
            w.flush()?;
        }
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
