//! The `connectedDeviceCount` series: a point at every change and one each virtual minute.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::{Event, EventKind};

/// One sample of the number of connected devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CountSample {
    #[serde(with = "humantime_serde")]
    pub time: SystemTime,
    pub count: usize,
}

/// Derive the series from the log: every `connected_devices` change, and the value at each whole
/// virtual minute from the first event to the last.
pub fn connected_device_count<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<CountSample> {
    let minute = Duration::from_secs(60);
    let mut out = Vec::new();
    let mut count = 0usize;
    let mut next_minute: Option<SystemTime> = None;
    let mut last_time = None;
    for e in events {
        let next = next_minute.get_or_insert_with(|| ceil_minute(e.time));
        while *next <= e.time {
            out.push(CountSample { time: *next, count });
            *next += minute;
        }
        if let EventKind::ConnectedDevices { count: c } = e.kind {
            count = c;
            out.push(CountSample {
                time: e.time,
                count,
            });
        }
        last_time = Some(e.time);
    }
    if let (Some(last), Some(next)) = (last_time, next_minute) {
        if next <= last {
            out.push(CountSample { time: next, count });
        }
    }
    out
}

fn ceil_minute(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs.div_ceil(60) * 60)
}

/// The smallest count between two times (inclusive): the depth of a dip.
pub fn minimum_between(series: &[CountSample], from: SystemTime, to: SystemTime) -> Option<usize> {
    series
        .iter()
        .filter(|s| s.time >= from && s.time <= to)
        .map(|s| s.count)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, kind: EventKind) -> Event {
        Event {
            seq: 0,
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            elapsed: Duration::ZERO,
            conn: None,
            device: None,
            module: None,
            hub: None,
            kind,
        }
    }

    #[test]
    fn changes_and_minute_samples() {
        let events = [
            at(30, EventKind::ConnectedDevices { count: 1 }),
            at(90, EventKind::ConnectedDevices { count: 2 }),
            at(200, EventKind::ConnectedDevices { count: 0 }),
        ];
        let s = connected_device_count(&events);
        let pts: Vec<(u64, usize)> = s
            .iter()
            .map(|p| {
                (
                    p.time
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap()
                        .as_secs(),
                    p.count,
                )
            })
            .collect();
        assert_eq!(
            pts,
            vec![(30, 1), (60, 1), (90, 2), (120, 2), (180, 2), (200, 0)]
        );
        let from = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        assert_eq!(
            minimum_between(&s, from, from + Duration::from_secs(200)),
            Some(0)
        );
    }
}
