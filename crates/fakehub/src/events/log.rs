//! The event log: every event in order, with the Connections records derived alongside.
//!
//! Two ways to keep it:
//!
//! * **In memory** (a hub without an output directory, as the suite's test hubs are): every event
//!   stays in memory for the hub's life, as a test wants to read it whole.
//! * **On disk** (a hub with an output directory: `fakehub serve`, `fakehub run`): `events.jsonl`
//!   is the store. Emitting an event only puts it in memory; a writer thread takes the events not
//!   yet written, in order, makes each one whole line and the Connections (and DPS) records it
//!   causes, and writes them out in batches — woken every [`FLUSH_EVERY`] and whenever
//!   [`WAKE_WRITER_AT`] events wait; should [`WRITE_INLINE_AT`] wait (the writer fell behind), the
//!   emitter writes them itself; and at [`EventLog::flush`] and shutdown. So an event costs its
//!   emitter no serialization and no write, and a fleet run uses the machine's second core for
//!   its files. Memory holds the last [`WINDOW`] events (and those not yet written) and a sparse
//!   index into the file (one offset per [`CHECKPOINT_EVERY`] events), so a hub that runs for
//!   days stays flat in memory. Readers that want older events ([`EventLog::since`],
//!   [`EventLog::snapshot`], a stream that fell behind) read them back from the file: an event
//!   leaves memory only once the file holds it. Should a write fail (disk full), nothing more is
//!   written — never half a line — and the log keeps what follows in memory instead (the error is
//!   reported by [`EventLog::flush`] and at shutdown).
//!
//! Events read back from the file carry its millisecond precision.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use super::{dps_records, records};
use super::{Event, EventKind, Stamp, Subject};
use crate::clock::VirtualClock;

/// How many of the newest events a hub with an output directory keeps in memory (beside those
/// not yet in the file). Small enough that the events a busy hub makes and frees stay in a core's
/// cache: with 4,096 a connection's emit at 50,000 msgs/s spent most of its time in cache misses,
/// writing each new event into memory that had left the cache and dropping the oldest
/// (`perf annotate`).
pub const WINDOW: usize = 1024;
/// One file offset is kept per this many events (to read from any event without scanning).
pub const CHECKPOINT_EVERY: u64 = 1024;
/// How many events a stream that fell behind the window reads back from the file at once.
const READ_BACK: u64 = 1024;
/// Pending lines are written out once they reach this size.
const BATCH_BYTES: usize = 64 * 1024;
/// How often the writer thread writes out what waits (real time: it is not a timer of any clock,
/// so it never keeps a simulated run from skipping idle time).
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// The writer thread is woken at once when this many events wait to be written.
pub const WAKE_WRITER_AT: usize = 1024;
/// When this many events wait (the writer thread fell behind), the emitter writes them itself.
pub const WRITE_INLINE_AT: usize = 4096;
/// The most events a log with an output directory holds in memory, however far the writer thread
/// lags: the window, the batch the writer thread is writing, and up to [`WRITE_INLINE_AT`] that
/// wait (the emitter that finds that many writes them itself, after the writer's batch) — plus
/// one for each further thread emitting at the same moment. [`EventLog::flush`] brings it back to
/// [`WINDOW`].
pub const HELD_AT_MOST: usize = WINDOW + 2 * WRITE_INLINE_AT;

/// `events.jsonl`, as the store of a log with an output directory (the writer's).
struct Store {
    /// `None` once a write failed: nothing more is written, so the file holds whole lines only.
    writer: Option<File>,
    /// Whole lines not yet in the file (written out in batches).
    pending: Vec<u8>,
    /// The second the last line's time was in, formatted.
    time: super::line::TimeCache,
    /// Bytes written (whole lines).
    bytes: u64,
    /// The file offset of event `k × CHECKPOINT_EVERY`, for each k so far.
    checkpoints: Vec<u64>,
    /// Events `0..persisted` are in the file or pending.
    persisted: u64,
    /// Events `0..flushed` are in the file (only these may leave memory).
    flushed: u64,
}

struct LogState {
    /// The seq of the next event.
    next: u64,
    /// The events in memory: seq `base..next`.
    window: VecDeque<Arc<Event>>,
    base: u64,
    /// Whether the log has files: events then wait in `unwritten` for the writer.
    written: bool,
    /// Events emitted and not yet taken by the writer, in order.
    unwritten: Vec<Arc<Event>>,
    /// `events.jsonl`, once the log has it.
    path: Option<PathBuf>,
    /// The file offset of event `k × CHECKPOINT_EVERY`, for each k in the file.
    checkpoints: Vec<u64>,
    /// Events `0..flushed` are in the file (only these may leave memory).
    flushed: u64,
    /// The first write error (kind and text: an `io::Error` is not `Clone`).
    write_error: Option<(std::io::ErrorKind, String)>,
    /// Consumers of some kinds of events, sent each one as it is emitted.
    taps: Vec<TapSink>,
    /// Streams waiting for the next event (registered with `appended` before they counted
    /// themselves here): an emit wakes them only when there are some, since waking nobody still
    /// takes the notifier's lock for every event.
    waiting: usize,
}

/// Which kinds a tap wants, and where they go.
type TapSink = (
    fn(&EventKind) -> bool,
    tokio::sync::mpsc::UnboundedSender<Arc<Event>>,
);

/// The events of the kinds a consumer asked for, from the moment it asked: pushed to it as they
/// are emitted, so that a consumer of rare events (connections, say) never wakes for every
/// message and never reads back from the file behind a busy log.
pub struct Tap {
    /// The seq of the first event the tap will be sent; earlier ones are in the log.
    pub from: u64,
    pub events: tokio::sync::mpsc::UnboundedReceiver<Arc<Event>>,
}

/// What the writer writes to: the event file and the records derived from the events.
struct Files {
    store: Option<Store>,
    records: Option<(Box<dyn Write + Send>, records::RecordDeriver)>,
    /// The Device Provisioning Service's records, when a run has DPS.
    dps: Option<(Box<dyn Write + Send>, dps_records::DpsRecordDeriver)>,
}

impl LogState {
    fn note_error(&mut self, e: &std::io::Error) {
        self.write_error.get_or_insert((e.kind(), e.to_string()));
    }

    /// The events of `from..` held in memory, and where to read the older ones (if any).
    fn split(&self, from: u64) -> (Vec<Arc<Event>>, Option<FileRange>) {
        let start = from.max(self.base);
        let skip = usize::try_from(start - self.base).unwrap_or(usize::MAX);
        let in_memory = self.window.iter().skip(skip).cloned().collect();
        let older = if from < self.base {
            self.file_range(from, self.base)
        } else {
            None
        };
        (in_memory, older)
    }

    /// Where to read events `from..to` back (events before `base` are in the file: an event leaves
    /// memory only once written).
    fn file_range(&self, from: u64, to: u64) -> Option<FileRange> {
        let first_k = from / CHECKPOINT_EVERY;
        let first = usize::try_from(first_k).unwrap_or(usize::MAX);
        let last = usize::try_from(to.saturating_sub(1) / CHECKPOINT_EVERY).unwrap_or(usize::MAX);
        let checkpoints = match self.checkpoints.get(first..) {
            Some(known) => known
                .iter()
                .take(last.saturating_sub(first).saturating_add(1))
                .copied()
                .collect(),
            None => Vec::new(),
        };
        Some(FileRange {
            path: self.path.clone()?,
            first: first_k,
            checkpoints,
            from,
            to,
        })
    }

    /// Forget what the file holds beyond the window.
    fn trim(&mut self) {
        while self.window.len() > WINDOW && self.base < self.flushed {
            self.window.pop_front();
            self.base += 1;
        }
    }
}

impl Store {
    /// Write out the pending lines; after a failure nothing more is written (the events stay in
    /// memory).
    fn flush(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let Some(w) = self.writer.as_mut() else {
            self.pending = Vec::new();
            return Ok(());
        };
        match w.write_all(&self.pending) {
            Ok(()) => {
                self.pending.clear();
                self.flushed = self.persisted;
                Ok(())
            }
            Err(e) => {
                self.writer = None;
                self.pending = Vec::new();
                Err(e)
            }
        }
    }

    /// Append an event as one whole line, serialized where the batch is gathered; lines go out in
    /// batches of [`BATCH_BYTES`] (and at every flush). A line that cannot be made is not
    /// written (and the file never holds half of one).
    fn append(&mut self, event: &Event) -> std::io::Result<()> {
        if self.writer.is_none() {
            return Err(std::io::Error::other("events.jsonl is no longer written"));
        }
        if event.seq != self.persisted {
            return Err(std::io::Error::other("an earlier event is missing"));
        }
        let start = self.pending.len();
        if let Err(e) = super::line::write(&mut self.pending, event, &mut self.time) {
            self.pending.truncate(start);
            return Err(e.into());
        }
        self.pending.push(b'\n');
        if event.seq.is_multiple_of(CHECKPOINT_EVERY) {
            self.checkpoints.push(self.bytes);
        }
        self.bytes += self.pending.len().saturating_sub(start) as u64;
        self.persisted += 1;
        if self.pending.len() >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }
}

/// Events `from..to` of a log's file, which start at or after `offset`.
#[derive(Clone)]
struct FileRange {
    path: PathBuf,
    /// The file offsets of events `(first + i) × CHECKPOINT_EVERY`, for each i the range spans
    /// (as far as the file has them).
    first: u64,
    checkpoints: Vec<u64>,
    from: u64,
    to: u64,
}

/// A read back of at least this many checkpoints' worth of events is split between threads.
const PARALLEL_READ_FROM: usize = 16;
/// At most this many threads read one range back.
const READERS: usize = 4;

/// Parses `events.jsonl` lines, keeping one copy of each device id for every event it reads (a
/// fleet's log names each device thousands of times).
#[derive(Default)]
pub struct LineReader {
    names: std::collections::HashSet<Arc<str>, foldhash::fast::RandomState>,
    /// The id the last line named: the next often names it too (a CONNECT, its CONNACK and its
    /// close; a PINGREQ and its PINGRESP), and one comparison is cheaper than a look-up in a table
    /// of 100,000 ids.
    last: Option<Arc<str>>,
    lines: super::line_read::Reader,
}

impl LineReader {
    pub fn new() -> LineReader {
        LineReader::default()
    }

    /// One line as an event.
    pub fn parse(&mut self, line: &str) -> serde_json::Result<Event> {
        let names = &mut self.names;
        let last = &mut self.last;
        let mut intern = |d: &str| {
            if let Some(l) = last.as_ref().filter(|l| ***l == *d) {
                return Arc::clone(l);
            }
            let name = match names.get(d) {
                Some(known) => Arc::clone(known),
                None => {
                    let d: Arc<str> = Arc::from(d);
                    names.insert(Arc::clone(&d));
                    d
                }
            };
            *last = Some(Arc::clone(&name));
            name
        };
        // The form the hub writes is read in place; any other, by serde.
        if let Some(e) = self.lines.read(line, &mut intern) {
            return Ok(e);
        }
        let mut e: Event = serde_json::from_str(line)?;
        if let Some(d) = e.device.take() {
            e.device = Some(intern(&d));
        }
        Ok(e)
    }
}

impl FileRange {
    /// The events of the range, in order. A long range (a fleet's verdicts read millions of events
    /// back) is cut at checkpoints into parts that threads parse side by side, each from its own
    /// offset; the parts are joined in order, so the result is the same as one reader's.
    fn read(&self) -> std::io::Result<Vec<Arc<Event>>> {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        self.read_with(threads.min(READERS))
    }

    /// [`FileRange::read`] with at most `threads` readers.
    fn read_with(&self, threads: usize) -> std::io::Result<Vec<Arc<Event>>> {
        if threads < 2 || self.checkpoints.len() < PARALLEL_READ_FROM {
            let at = self.checkpoints.first().copied().unwrap_or(0);
            return self.read_part(at, self.from, self.to);
        }
        let job = Parts::of(self.clone(), threads);
        std::thread::scope(|scope| {
            let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(|| job.work())).collect();
            job.work();
            for helper in helpers {
                if let Err(panic) = helper.join() {
                    std::panic::resume_unwind(panic);
                }
            }
        });
        job.collect()
    }

    /// The range cut at checkpoints into `n` parts, each `(offset, from, to)`: the first starts at
    /// `from`, the last ends at `to`.
    fn cut(&self, n: usize) -> Vec<(u64, u64, u64)> {
        let count = self.checkpoints.len();
        let n = n.clamp(1, count.max(1));
        let cut = |j: usize| j.saturating_mul(count) / n;
        let seq_at = |i: usize| (self.first + i as u64).saturating_mul(CHECKPOINT_EVERY);
        let mut parts = Vec::with_capacity(n);
        for j in 0..n {
            let (start, end) = (cut(j), cut(j + 1));
            let from = if j == 0 { self.from } else { seq_at(start) };
            let to = if j + 1 == n { self.to } else { seq_at(end) };
            let at = self.checkpoints.get(start).copied();
            if let Some(at) = at.or((count == 0).then_some(0)) {
                parts.push((at, from.max(self.from), to.min(self.to)));
            }
        }
        parts
    }

    /// Events `from..to`, reading from `offset` (a line at or before event `from`).
    fn read_part(&self, offset: u64, from: u64, to: u64) -> std::io::Result<Vec<Arc<Event>>> {
        let mut file = File::open(&self.path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let mut out = Vec::new();
        let mut line = String::new();
        let mut lines = LineReader::new();
        if from >= to {
            return Ok(out);
        }
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                break;
            }
            let event = lines.parse(&line).map_err(std::io::Error::other)?;
            if event.seq >= to {
                break;
            }
            if event.seq >= from {
                out.push(Arc::new(event));
            }
        }
        Ok(out)
    }
}

/// What reading one part gave.
type PartRead = std::io::Result<Vec<Arc<Event>>>;

/// A range of the file being read back in parts that any number of threads take one at a time:
/// a thread that has nothing else to do joins in, and the parts are put back in order.
struct Parts {
    range: FileRange,
    /// Each part's `(offset, from, to)`.
    cuts: Vec<(u64, u64, u64)>,
    /// The next part to take; past the end once every part is taken (or the reading was given up).
    next: std::sync::atomic::AtomicUsize,
    /// What each part read, once read.
    read: Mutex<Vec<Option<PartRead>>>,
}

impl Parts {
    fn of(range: FileRange, parts: usize) -> Parts {
        let cuts = range.cut(parts);
        let read = Mutex::new(cuts.iter().map(|_| None).collect());
        Parts {
            range,
            cuts,
            next: std::sync::atomic::AtomicUsize::new(0),
            read,
        }
    }

    /// Read parts until none is left.
    fn work(&self) {
        use std::sync::atomic::Ordering;
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(&(at, from, to)) = self.cuts.get(i) else {
                return;
            };
            let part = self.range.read_part(at, from, to);
            if let Some(slot) = self
                .read
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(i)
            {
                *slot = Some(part);
            }
        }
    }

    /// Stop taking parts (those being read are finished). The count is set to the end, not to
    /// its largest value, which the next take would wrap back to the first part.
    fn give_up(&self) {
        self.next
            .store(self.cuts.len(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The parts, joined in order (after every worker is done).
    fn collect(&self) -> std::io::Result<Vec<Arc<Event>>> {
        let read = std::mem::take(&mut *self.read.lock().unwrap_or_else(|p| p.into_inner()));
        let mut parts = Vec::with_capacity(read.len());
        for part in read {
            parts.push(
                part.ok_or_else(|| std::io::Error::other("a part of events.jsonl was not read"))??,
            );
        }
        // Sized once: a fleet's millions of events would otherwise be copied as the vector grows.
        let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum());
        for part in parts {
            out.extend(part);
        }
        Ok(out)
    }
}

/// The events so far of a log kept on disk, being read back by a thread of its own while the hub
/// goes on (see [`EventLog::read_ahead`]). [`ReadAhead::finish`] gives every event of the log, as
/// [`EventLog::since`]`(0)` would.
pub struct ReadAhead {
    log: EventLog,
    /// Events `0..upto` are being read back by `job`.
    upto: u64,
    job: Option<(Arc<Parts>, std::thread::JoinHandle<()>)>,
}

/// The parts a read-ahead is cut into (the thread that finishes it takes what is left).
const READ_AHEAD_PARTS: usize = 64;

impl ReadAhead {
    /// Every event of the log: those read ahead, then those since. The calling thread reads what
    /// is left of the parts beside the read-ahead's thread.
    pub fn finish(mut self) -> Vec<Arc<Event>> {
        let Some((job, thread)) = self.job.take() else {
            return self.log.since(0);
        };
        job.work();
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
        match job.collect() {
            Ok(mut events) => {
                events.extend(self.log.since(self.upto));
                events
            }
            Err(e) => {
                tracing::warn!(error = %e, "events.jsonl could not be read ahead");
                self.log.since(0)
            }
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        if let Some((job, _)) = &self.job {
            job.give_up();
        }
    }
}

/// One event as a whole JSON line.
fn line_of(value: &impl serde::Serialize) -> std::io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    Ok(line)
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
    /// The files; held while a batch is written (one writer at a time, in order). Taken before
    /// `state` when both are held.
    files: Mutex<Option<Files>>,
    /// The writer thread, once started.
    writer: std::sync::OnceLock<std::thread::Thread>,
    appended: Notify,
    /// Connection ids, unique across every hub writing this log.
    next_conn: std::sync::atomic::AtomicU64,
}

impl LogInner {
    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write every event that waits, in order: its line, its records; then out to the files.
    fn write_waiting(&self) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let Some(f) = files.as_mut() else {
            return;
        };
        let batch = std::mem::take(&mut self.lock().unwritten);
        let mut failed: Option<std::io::Error> = None;
        for e in &batch {
            if let Some(store) = f.store.as_mut() {
                if let Err(err) = store.append(e) {
                    failed.get_or_insert(err);
                }
            }
            if let Err(err) = write_records(&mut f.records, e) {
                failed.get_or_insert(err);
            }
            if let Err(err) = write_records(&mut f.dps, e) {
                failed.get_or_insert(err);
            }
        }
        let stored = f.store.as_mut().map(|st| (st.flush(), st.flushed));
        let sinks = [
            f.records.as_mut().map(|(w, _)| w),
            f.dps.as_mut().map(|(w, _)| w),
        ];
        for w in sinks.into_iter().flatten() {
            if let Err(err) = w.flush() {
                failed.get_or_insert(err);
            }
        }
        let mut s = self.lock();
        if let Some(store) = f.store.as_ref() {
            let known = s.checkpoints.len();
            s.checkpoints
                .extend_from_slice(store.checkpoints.get(known..).unwrap_or_default());
        }
        if let Some((flushed, upto)) = stored {
            if let Err(err) = flushed {
                failed.get_or_insert(err);
            }
            s.flushed = upto;
        }
        if let Some(err) = failed {
            s.note_error(&err);
        }
        s.trim();
    }
}

impl Drop for LogInner {
    fn drop(&mut self) {
        // What waits is written before the log goes.
        self.write_waiting();
    }
}

impl EventLog {
    /// A log kept in memory, whole.
    pub fn new(clock: VirtualClock) -> Self {
        EventLog {
            inner: Arc::new(LogInner {
                clock,
                state: Mutex::new(LogState {
                    next: 0,
                    window: VecDeque::new(),
                    base: 0,
                    written: false,
                    unwritten: Vec::new(),
                    path: None,
                    checkpoints: Vec::new(),
                    flushed: 0,
                    write_error: None,
                    taps: Vec::new(),
                    waiting: 0,
                }),
                files: Mutex::new(None),
                writer: std::sync::OnceLock::new(),
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
        self.inner.lock()
    }

    /// Keep the log in `events` (created or truncated; JSON Lines), with only the newest events in
    /// memory, and write the Connections records derived from it to `records`.
    pub fn write_to(
        &self,
        events: &Path,
        records: Box<dyn Write + Send>,
        context: records::RecordContext,
    ) -> std::io::Result<()> {
        let file = File::create(events)?;
        let mut files = self.inner.files.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = self.lock();
        let store = Store {
            writer: Some(file),
            pending: Vec::new(),
            time: Default::default(),
            bytes: 0,
            checkpoints: Vec::new(),
            persisted: s.base,
            flushed: s.base,
        };
        // Events from before (a log kept in memory until now) go first.
        s.unwritten = s.window.iter().cloned().collect();
        s.written = true;
        s.path = Some(events.to_owned());
        drop(s);
        let dps = files.take().and_then(|f| f.dps);
        *files = Some(Files {
            store: Some(store),
            records: Some((records, records::RecordDeriver::new(context))),
            dps,
        });
        drop(files);
        self.inner.write_waiting();
        self.start_writer();
        Ok(())
    }

    /// The writer thread: it writes what waits every [`FLUSH_EVERY`] (so that what happened is on
    /// disk within that long even while nothing else happens) and whenever woken; it ends with
    /// the log.
    fn start_writer(&self) {
        if self.inner.writer.get().is_some() {
            return;
        }
        let log = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("fakehub-events-writer".into())
            .spawn(move || loop {
                std::thread::park_timeout(FLUSH_EVERY);
                let Some(inner) = log.upgrade() else {
                    return;
                };
                inner.write_waiting();
            });
        match spawned {
            Ok(handle) => {
                let _ = self.inner.writer.set(handle.thread().clone());
            }
            // Without it, emitters write what waits once WRITE_INLINE_AT events do, and readers
            // and flush write the rest.
            Err(e) => tracing::warn!(error = %e, "the events.jsonl writer thread could not start"),
        }
    }

    /// Also write the Device Provisioning Service's diagnostic records derived from the events.
    pub fn write_dps_to(&self, records: Box<dyn Write + Send>, context: dps_records::DpsContext) {
        let mut files = self.inner.files.lock().unwrap_or_else(|p| p.into_inner());
        let dps = Some((records, dps_records::DpsRecordDeriver::new(context)));
        match files.as_mut() {
            Some(f) => f.dps = dps,
            None => {
                *files = Some(Files {
                    store: None,
                    records: None,
                    dps,
                });
                drop(files);
                self.lock().written = true;
                self.start_writer();
            }
        }
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
        let (now, elapsed_now) = self.inner.clock.readings();
        let (time, elapsed) = match stamp {
            Stamp::Now => (now, elapsed_now),
            Stamp::Wall(t) => {
                let late = now.duration_since(t).unwrap_or_default();
                (t, elapsed_now.saturating_sub(late))
            }
            Stamp::Elapsed(deadline) => {
                let late = elapsed_now.saturating_sub(deadline);
                (
                    now.checked_sub(late).unwrap_or(now),
                    deadline.min(elapsed_now),
                )
            }
        };
        let mut s = self.lock();
        let event = Arc::new(Event {
            seq: s.next,
            time,
            elapsed,
            conn: subject.conn,
            device: subject.device.clone(),
            module: subject.module.clone(),
            hub: self.hub.clone(),
            kind,
        });
        s.next += 1;
        s.window.push_back(event.clone());
        let waiting = if s.written {
            s.unwritten.push(event.clone());
            s.unwritten.len()
        } else {
            0
        };
        s.trim();
        if !s.taps.is_empty() {
            // A consumer that went away is forgotten.
            s.taps
                .retain(|(wants, tx)| !wants(&event.kind) || tx.send(event.clone()).is_ok());
        }
        let wake = s.waiting > 0;
        drop(s);
        if waiting >= WRITE_INLINE_AT {
            // The writer thread fell behind: write here rather than hold ever more in memory.
            self.inner.write_waiting();
        } else if waiting > 0 && waiting.is_multiple_of(WAKE_WRITER_AT) {
            if let Some(writer) = self.inner.writer.get() {
                writer.unpark();
            }
        }
        if wake {
            self.inner.appended.notify_waiters();
        }
        event
    }

    /// Every event of seq `from` on, in order — from memory, and from the file for those no longer
    /// held. The one way to read "what happened since N".
    pub fn since(&self, from: u64) -> Vec<Arc<Event>> {
        let (in_memory, older) = self.lock().split(from);
        let Some(older) = older else {
            return in_memory;
        };
        let mut out = match older.read() {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "events.jsonl could not be read back");
                Vec::new()
            }
        };
        out.extend(in_memory);
        out
    }

    /// Start reading back the events so far on a thread of their own, while the hub goes on (a
    /// run's devices stop meanwhile): [`ReadAhead::finish`] then gives every event. For a log in
    /// memory, or one too short to be worth a thread, nothing is read until `finish`.
    pub fn read_ahead(&self) -> ReadAhead {
        self.inner.write_waiting();
        let (upto, range) = {
            let s = self.lock();
            (s.flushed, s.file_range(0, s.flushed))
        };
        let job = range
            .filter(|r| r.checkpoints.len() >= PARALLEL_READ_FROM)
            .and_then(|range| {
                let job = Arc::new(Parts::of(range, READ_AHEAD_PARTS));
                let worker = Arc::clone(&job);
                std::thread::Builder::new()
                    .name("fakehub-read-ahead".into())
                    .spawn(move || worker.work())
                    .ok()
                    .map(|thread| (job, thread))
            });
        ReadAhead {
            log: self.clone(),
            upto,
            job,
        }
    }

    /// Every event so far (read back from the file for a log kept on disk).
    pub fn snapshot(&self) -> Vec<Arc<Event>> {
        self.since(0)
    }

    /// How many events so far.
    pub fn len(&self) -> usize {
        usize::try_from(self.lock().next).unwrap_or(usize::MAX)
    }

    /// Whether nothing happened yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many events are held in memory now.
    pub fn in_memory(&self) -> usize {
        self.lock().window.len()
    }

    /// Every event from now on whose kind `wants`, pushed as it is emitted (see [`Tap`]).
    pub fn tap(&self, wants: fn(&EventKind) -> bool) -> Tap {
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let mut s = self.lock();
        s.taps.push((wants, tx));
        Tap {
            from: s.next,
            events,
        }
    }

    /// A stream of every event from the beginning, then live ones; it never misses one.
    pub fn stream(&self) -> EventStream {
        self.stream_from(0)
    }

    /// A stream of the events from position `seq` on, then live ones.
    pub fn stream_from(&self, seq: u64) -> EventStream {
        EventStream {
            log: self.clone(),
            next: seq,
            read_back: VecDeque::new(),
        }
    }

    /// Flush the output files. Returns the first write error seen, if any.
    pub fn flush(&self) -> std::io::Result<()> {
        self.inner.write_waiting();
        let s = self.lock();
        match &s.write_error {
            Some((kind, text)) => Err(std::io::Error::new(*kind, text.clone())),
            None => Ok(()),
        }
    }
}

/// What derives diagnostic records from events (the hub's Connections records, DPS's).
trait Deriver {
    type Record: serde::Serialize;
    fn push(&mut self, event: &Event) -> Vec<Self::Record>;
}

impl Deriver for records::RecordDeriver {
    type Record = records::ConnectionRecord;
    fn push(&mut self, event: &Event) -> Vec<Self::Record> {
        records::RecordDeriver::push(self, event)
    }
}

impl Deriver for dps_records::DpsRecordDeriver {
    type Record = dps_records::DpsRecord;
    fn push(&mut self, event: &Event) -> Vec<Self::Record> {
        dps_records::DpsRecordDeriver::push(self, event)
    }
}

/// Write the records an event causes, as whole lines (flushed with the batch).
fn write_records<D: Deriver>(
    sink: &mut Option<(Box<dyn Write + Send>, D)>,
    event: &Event,
) -> std::io::Result<()> {
    let Some((w, deriver)) = sink.as_mut() else {
        return Ok(());
    };
    let records = deriver.push(event);
    let mut lines = Vec::new();
    for record in &records {
        lines.extend(line_of(record)?);
    }
    if !lines.is_empty() {
        w.write_all(&lines)?;
    }
    Ok(())
}

/// A stream counted among the log's waiting ones while this lives.
struct Waiting<'a>(&'a EventLog);

impl<'a> Waiting<'a> {
    /// Count a stream whose next event is `next` as waiting, unless that event is already there.
    fn register(log: &'a EventLog, next: u64) -> Option<Self> {
        let mut s = log.lock();
        if next < s.next {
            return None;
        }
        s.waiting = s.waiting.saturating_add(1);
        Some(Waiting(log))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.waiting = s.waiting.saturating_sub(1);
    }
}

/// Reads the log in order, waiting for new events at the end.
pub struct EventStream {
    log: EventLog,
    next: u64,
    /// Events read back from the file (the stream fell behind the window).
    read_back: VecDeque<Arc<Event>>,
}

impl EventStream {
    /// The next event, waiting for it if needed.
    pub async fn next(&mut self) -> Arc<Event> {
        let log = self.log.clone();
        loop {
            let notified = log.inner.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(e) = self.try_next() {
                return e;
            }
            // Counted as waiting only if still nothing new: an emit that locks the state after
            // this sees the count and wakes `notified`, one before it left an event to read.
            if let Some(_waiting) = Waiting::register(&log, self.next) {
                notified.await;
            }
        }
    }

    /// The next event if one is already in the log; never waits.
    pub fn try_next(&mut self) -> Option<Arc<Event>> {
        loop {
            if let Some(e) = self.read_back.pop_front() {
                self.next = e.seq + 1;
                return Some(e);
            }
            let log = self.log.clone();
            let older = {
                let s = log.lock();
                if self.next >= s.next {
                    return None;
                }
                if self.next >= s.base {
                    let i = usize::try_from(self.next - s.base).ok()?;
                    let e = s.window.get(i).cloned()?;
                    self.next += 1;
                    return Some(e);
                }
                let to = s.base.min(self.next.saturating_add(READ_BACK));
                s.file_range(self.next, to)
            };
            match older.map(|r| (r.read(), r.to)) {
                Some((Ok(events), _)) if !events.is_empty() => self.read_back.extend(events),
                Some((Ok(_), to)) => self.next = to,
                Some((Err(e), to)) => {
                    tracing::warn!(error = %e, "events.jsonl could not be read back");
                    self.next = to;
                }
                None => self.next = log.lock().base,
            }
        }
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

#[cfg(test)]
mod tests;
