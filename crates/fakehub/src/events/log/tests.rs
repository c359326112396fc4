use std::time::Duration;

use fakehub_protocol::properties::PropertyBag;

use super::*;
use crate::events::Direction;

fn telemetry(i: u64) -> EventKind {
    let mut properties = PropertyBag::default();
    properties.application.insert("n".into(), i.to_string());
    EventKind::Publish {
        dir: Direction::In,
        topic: format!("devices/d/messages/events/n={i}"),
        qos: 1,
        pkid: (i % 60000) as u16 + 1,
        dup: false,
        retain: false,
        size: 10,
        message_id: Some(format!("m{i}")),
        properties: Box::new(properties),
    }
}

fn subject() -> Subject {
    Subject {
        conn: Some(1),
        device: Some("d".into()),
        module: None,
    }
}

fn on_disk(dir: &Path) -> EventLog {
    let log = EventLog::new(VirtualClock::new());
    log.write_to(
        &dir.join("events.jsonl"),
        Box::new(std::io::sink()),
        records::RecordContext::for_host("h"),
    )
    .unwrap();
    log
}

#[test]
fn without_a_file_every_event_stays_in_memory() {
    let log = EventLog::new(VirtualClock::new());
    for i in 0..(WINDOW as u64 * 3) {
        log.emit(&subject(), telemetry(i));
    }
    assert_eq!(log.in_memory(), WINDOW * 3);
    assert_eq!(log.snapshot().len(), WINDOW * 3);
}

#[test]
fn with_a_file_memory_holds_a_window_and_every_reader_still_sees_everything() {
    let dir = tempfile::tempdir().unwrap();
    let log = on_disk(dir.path());
    let mut early = log.stream();
    assert!(early.try_next().is_none());
    // More than twice the most memory may hold, so a log that kept everything would fail here.
    let n = HELD_AT_MOST as u64 * 2 + 17;
    let mut most = 0;
    for i in 0..n {
        log.emit(&subject(), telemetry(i));
        most = most.max(log.in_memory());
    }
    assert!(most <= HELD_AT_MOST, "{most}");
    assert_eq!(log.len() as u64, n);
    let all = log.snapshot();
    assert_eq!(all.len() as u64, n);
    assert!(all.iter().enumerate().all(|(i, e)| e.seq == i as u64));
    assert_eq!(all[5].kind, telemetry(5));
    for from in [
        0,
        1,
        CHECKPOINT_EVERY - 1,
        CHECKPOINT_EVERY,
        5000,
        n - 1,
        n,
        n + 10,
    ] {
        let since = log.since(from);
        assert_eq!(since.len() as u64, n.saturating_sub(from), "since {from}");
        assert!(since.first().is_none_or(|e| e.seq == from));
        assert!(since.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    }
    // A stream made before, read after: every event once, in order, from the file then memory.
    let mut seen = 0;
    while let Some(e) = early.try_next() {
        assert_eq!(e.seq, seen);
        seen += 1;
    }
    assert_eq!(seen, n);
    log.flush().unwrap();
    assert_eq!(log.in_memory(), WINDOW);
    let text = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    assert_eq!(text.lines().count() as u64, n);
}

#[test]
fn a_failed_write_stops_the_file_at_a_whole_line_and_memory_keeps_the_rest() {
    // /dev/full: every write fails with "no space left".
    let log = EventLog::new(VirtualClock::new());
    log.write_to(
        Path::new("/dev/full"),
        Box::new(std::io::sink()),
        records::RecordContext::for_host("h"),
    )
    .unwrap();
    for i in 0..(WINDOW as u64 + 10) {
        log.emit(&subject(), telemetry(i));
    }
    let e = log.flush().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
    assert_eq!(log.in_memory(), WINDOW + 10);
    assert_eq!(log.snapshot().len(), WINDOW + 10);
}

#[test]
fn a_panic_while_a_line_is_made_leaves_no_half_line() {
    struct HalfThenPanic;
    impl serde::Serialize for HalfThenPanic {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut m = s.serialize_map(None)?;
            m.serialize_entry("seq", &1)?;
            panic!("injected");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let log = on_disk(dir.path());
    log.emit(&subject(), telemetry(0));
    let r = std::panic::catch_unwind(|| line_of(&HalfThenPanic));
    assert!(r.is_err());
    log.emit(&subject(), telemetry(1));
    log.flush().unwrap();
    let text = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    for line in text.lines() {
        serde_json::from_str::<Event>(line).unwrap();
    }
    assert_eq!(text.lines().count(), 2);
}

#[tokio::test]
async fn a_live_stream_wakes_for_new_events_and_never_misses_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = on_disk(dir.path());
    let mut s = log.stream();
    let writer = log.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        for i in 0..(WINDOW as u64 * 2) {
            writer.emit(&subject(), telemetry(i));
        }
    });
    for i in 0..(WINDOW as u64 * 2) {
        assert_eq!(s.next().await.seq, i);
    }
}

#[tokio::test]
async fn an_emit_wakes_the_streams_that_wait_and_a_stream_that_stops_waiting_is_counted_out() {
    let log = EventLog::new(VirtualClock::new());
    assert_eq!(log.lock().waiting, 0);
    let mut s = log.stream();
    // Nothing to read: the stream counts itself as waiting, and out again when given up.
    let gave_up = tokio::time::timeout(Duration::from_millis(20), s.next()).await;
    assert!(gave_up.is_err());
    assert_eq!(log.lock().waiting, 0);
    let waiter = tokio::spawn(async move { s.next().await.seq });
    while log.lock().waiting == 0 {
        tokio::task::yield_now().await;
    }
    log.emit(&subject(), telemetry(0));
    let woken = tokio::time::timeout(Duration::from_secs(10), waiter).await;
    assert_eq!(woken.expect("the emit did not wake the stream").unwrap(), 0);
    assert_eq!(log.lock().waiting, 0);
}

/// Emits race the streams' waits on another thread, one event at a time: a wake lost between a
/// stream's look at the log and its counting itself as waiting would leave it waiting for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_on_another_thread_miss_no_wake_one_event_at_a_time() {
    const EVENTS: u64 = 2000;
    let log = EventLog::new(VirtualClock::new());
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let mut s = log.stream();
            tokio::spawn(async move {
                for i in 0..EVENTS {
                    assert_eq!(s.next().await.seq, i);
                }
            })
        })
        .collect();
    let emitter = log.clone();
    std::thread::spawn(move || {
        for i in 0..EVENTS {
            emitter.emit(&subject(), telemetry(i));
            std::thread::yield_now();
        }
    });
    for r in readers {
        tokio::time::timeout(Duration::from_secs(30), r)
            .await
            .expect("a stream missed a wake")
            .unwrap();
    }
}

#[test]
fn events_from_before_the_file_was_given_are_written_first() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::new(VirtualClock::new());
    log.emit(&subject(), telemetry(0));
    log.write_to(
        &dir.path().join("events.jsonl"),
        Box::new(std::io::sink()),
        records::RecordContext::for_host("h"),
    )
    .unwrap();
    for i in 1..(WINDOW as u64 * 2) {
        log.emit(&subject(), telemetry(i));
    }
    log.flush().unwrap();
    assert_eq!(log.in_memory(), WINDOW);
    let all = log.snapshot();
    assert_eq!(all.len(), WINDOW * 2);
    assert_eq!(all[0].kind, telemetry(0));
}

#[test]
fn lines_go_out_in_batches_and_within_the_flush_period() {
    let dir = tempfile::tempdir().unwrap();
    let log = on_disk(dir.path());
    let read = || std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    log.emit(&subject(), telemetry(0));
    // One event is not a batch: the flusher thread writes it out within its period.
    let start = std::time::Instant::now();
    while read().lines().count() < 1 {
        assert!(
            start.elapsed() < FLUSH_EVERY * 50,
            "never flushed by the flusher thread"
        );
        std::thread::sleep(FLUSH_EVERY / 4);
    }
    // Past WRITE_INLINE_AT waiting events the emitter writes them itself, whatever the writer
    // thread does: memory never holds that many unwritten events.
    let n = WRITE_INLINE_AT as u64 + 100;
    for i in 1..n {
        log.emit(&subject(), telemetry(i));
        let waiting = log.inner.lock().unwritten.len();
        assert!(
            waiting < WRITE_INLINE_AT,
            "{waiting} events wait to be written"
        );
    }
    // The writer thread may be writing a batch while this reads (a reader of a file can see a
    // write under way): what is there is whole lines, then at most the start of the next one.
    let text = read();
    let whole = text.rsplit_once('\n').map_or("", |(w, _)| w);
    for l in whole.lines() {
        assert!(
            serde_json::from_str::<Event>(l).is_ok(),
            "whole lines only: {l}"
        );
    }
    log.flush().unwrap();
    let text = read();
    assert!(text.ends_with('\n'), "whole lines only");
    assert_eq!(text.lines().count() as u64, n);
    assert!(text
        .lines()
        .all(|l| serde_json::from_str::<Event>(l).is_ok()));
}

#[test]
fn a_long_read_back_split_between_threads_gives_every_event_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = on_disk(dir.path());
    let n = CHECKPOINT_EVERY * (PARALLEL_READ_FROM as u64 + 7) + 5;
    for i in 0..n {
        log.emit(&subject(), telemetry(i));
    }
    log.flush().unwrap();
    let base = log.lock().base;
    assert!(
        base > CHECKPOINT_EVERY * PARALLEL_READ_FROM as u64,
        "{base}"
    );
    for from in [0, 1, CHECKPOINT_EVERY - 1, CHECKPOINT_EVERY, 5000, base - 1] {
        let range = log.lock().file_range(from, base).unwrap();
        for threads in 1..=READERS + 1 {
            let events = range.read_with(threads).unwrap();
            assert_eq!(
                events.len() as u64,
                base - from,
                "from {from}, {threads} threads"
            );
            assert!(
                events.iter().zip(from..).all(|(e, seq)| e.seq == seq),
                "from {from}, {threads} threads"
            );
            assert_eq!(
                events.last().map(|e| e.kind.clone()),
                Some(telemetry(base - 1))
            );
        }
    }
}

#[test]
fn a_read_ahead_gives_every_event_in_order_with_those_emitted_after_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let log = on_disk(dir.path());
    let before = CHECKPOINT_EVERY * (PARALLEL_READ_FROM as u64 + 3) + 11;
    for i in 0..before {
        log.emit(&subject(), telemetry(i));
    }
    let ahead = log.read_ahead();
    assert_eq!(
        ahead.upto, before,
        "everything emitted so far is read ahead"
    );
    assert!(ahead.job.is_some(), "a log this long is read on a thread");
    // More than the window after it started: some of these are read back from the file too.
    let after = before + HELD_AT_MOST as u64 + 5;
    for i in before..after {
        log.emit(&subject(), telemetry(i));
    }
    let events = ahead.finish();
    assert_eq!(events.len() as u64, after);
    assert!(events.iter().zip(0..).all(|(e, seq)| e.seq == seq));
    assert!(events.iter().zip(0..).all(|(e, i)| e.kind == telemetry(i)));
    // A short log is not worth a thread: finishing reads it all then.
    let short_dir = tempfile::tempdir().unwrap();
    let short = on_disk(short_dir.path());
    for i in 0..3 * CHECKPOINT_EVERY {
        short.emit(&subject(), telemetry(i));
    }
    let ahead = short.read_ahead();
    assert!(ahead.job.is_none());
    short.emit(&subject(), telemetry(3 * CHECKPOINT_EVERY));
    assert_eq!(ahead.finish().len() as u64, 3 * CHECKPOINT_EVERY + 1);
    // One given up stops taking parts (its thread ends by itself).
    let ahead = log.read_ahead();
    drop(ahead);
    assert_eq!(log.since(0).len() as u64, after);
}
