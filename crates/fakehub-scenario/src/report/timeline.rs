//! What the timeline draws, per identity: connected spans with their closes, CONNECTs that did not
//! connect, the ends of device processes, and the faults — read from the log's lifecycle fold.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::SystemTime;

use fakehub::events::{Connection, FaultAction};
use fakehub::{CloseCause, CloseHow, Closer, EventKind, ResultCode};
use fakehub_assert::Log;

use super::{close_style_index, CLOSE_STYLES, MAX_ROWS};

/// A connected span: from CONNACK 0 to its `closed` event (or the end of the log).
pub(super) struct Span {
    pub conn: u64,
    pub from: SystemTime,
    pub to: SystemTime,
    /// None while still connected at the end of the log.
    pub close: Option<Close>,
}

pub(super) struct Close {
    pub cause: CloseCause,
    pub by: Closer,
    pub how: CloseHow,
    pub detail: Option<String>,
    pub result: Option<ResultCode>,
}

/// A CONNECT that did not lead to a connected session.
pub(super) struct Attempt {
    pub conn: u64,
    pub at: SystemTime,
    pub outcome: AttemptOutcome,
}

pub(super) enum AttemptOutcome {
    /// CONNACK with a non-zero return code.
    Refused {
        code: u8,
        result: Option<ResultCode>,
        reason: Option<String>,
    },
    /// The hub never answered (e.g. an outage that hangs CONNECTs); the connection then closed.
    Unanswered {
        result: Option<ResultCode>,
        detail: Option<String>,
    },
}

#[derive(Default)]
pub(super) struct Row {
    pub spans: Vec<Span>,
    pub attempts: Vec<Attempt>,
    /// Ends of the device's process (crashed, exited, stopped), from `device_process` events.
    pub process_ends: Vec<(SystemTime, String)>,
}

pub(super) struct FaultBand {
    pub id: u64,
    pub name: String,
    pub from: SystemTime,
    /// None if the fault had not ended by the end of the log.
    pub to: Option<SystemTime>,
}

/// The log folded into what the timeline draws.
pub(super) struct Timeline {
    pub start: SystemTime,
    pub end: SystemTime,
    pub rows: BTreeMap<String, Row>,
    pub faults: Vec<FaultBand>,
}

/// The row name of an identity: `device`, or `device/module`.
fn row_name(device: &str, module: Option<&str>) -> String {
    match module {
        Some(m) => format!("{device}/{m}"),
        None => device.to_owned(),
    }
}

impl Timeline {
    pub fn of(log: &Log) -> Timeline {
        let start = log.start();
        let end = log.events().iter().map(|e| e.time).max().unwrap_or(start);
        // Rows are gathered by identity (borrowed, hashed) and named once at the end: a fleet's log
        // names each of 100,000 devices thousands of times, and a row name made and looked up in
        // an ordered map per event or connection was seconds of a fleet run's report.
        let mut by_id: HashMap<(&str, Option<&str>), Row, foldhash::fast::RandomState> =
            HashMap::default();
        let mut faults: Vec<FaultBand> = Vec::new();
        for e in log.events() {
            if let Some(d) = &e.device {
                // Every identity the log names has a row.
                by_id.entry((&**d, e.module.as_deref())).or_default();
            }
            match &e.kind {
                EventKind::Fault {
                    id, action, fault, ..
                } => match action {
                    FaultAction::Started => faults.push(FaultBand {
                        id: *id,
                        name: fault.clone(),
                        from: e.time,
                        to: None,
                    }),
                    FaultAction::Ended => {
                        if let Some(band) =
                            faults.iter_mut().find(|f| f.id == *id && f.to.is_none())
                        {
                            band.to = Some(e.time);
                        }
                    }
                },
                EventKind::DeviceProcess {
                    action,
                    code,
                    signal,
                } if matches!(action.as_str(), "crashed" | "exited" | "stopped") => {
                    if let Some(d) = &e.device {
                        let how = match (code, signal) {
                            (_, Some(sig)) => format!("{action} (signal {sig})"),
                            (Some(c), None) => format!("{action} (exit status {c})"),
                            (None, None) => action.clone(),
                        };
                        by_id
                            .entry((d, e.module.as_deref()))
                            .or_default()
                            .process_ends
                            .push((e.time, how));
                    }
                }
                _ => {}
            }
        }
        for c in log.lifecycle().connections() {
            let Some(device) = &c.device else { continue };
            let row = by_id.entry((device, c.module.as_deref())).or_default();
            add_connection(row, c, end);
        }
        let rows: BTreeMap<String, Row> = by_id
            .into_iter()
            .map(|((device, module), mut row)| {
                row.spans.sort_by_key(|s| (s.from, s.conn));
                (row_name(device, module), row)
            })
            .collect();
        Timeline {
            start,
            end,
            rows,
            faults,
        }
    }

    /// How many closes of each style (indexed like `CLOSE_STYLES`).
    pub fn close_counts(&self) -> [usize; CLOSE_STYLES.len()] {
        let mut counts = [0usize; CLOSE_STYLES.len()];
        for span in self.rows.values().flat_map(|r| &r.spans) {
            if let Some(c) = &span.close {
                let i = close_style_index(c.cause);
                counts[i] = counts[i].saturating_add(1);
            }
        }
        counts
    }

    /// The rows to draw: devices with a failing expectation first, then the rest in id order, at
    /// most `MAX_ROWS`, drawn in id order. Also returns how many were left out.
    pub fn visible_rows(&self, failing: &BTreeSet<&str>) -> (Vec<&str>, usize) {
        let ids: Vec<&str> = self.rows.keys().map(String::as_str).collect();
        if ids.len() <= MAX_ROWS {
            return (ids, 0);
        }
        let mut chosen: BTreeSet<&str> = ids
            .iter()
            .copied()
            .filter(|id| failing.contains(id))
            .take(MAX_ROWS)
            .collect();
        for id in &ids {
            if chosen.len() >= MAX_ROWS {
                break;
            }
            chosen.insert(id);
        }
        let hidden = ids.len().saturating_sub(chosen.len());
        (chosen.into_iter().collect(), hidden)
    }
}

/// One connection of a row: a connected span, a refused CONNECT, or one never answered.
fn add_connection(row: &mut Row, c: &Connection, end: SystemTime) {
    match (&c.connack, &c.closed) {
        (Some(ack), closed) if ack.code == 0 => row.spans.push(Span {
            conn: c.conn,
            from: ack.at.time,
            to: closed.as_ref().map_or(end, |x| x.at.time),
            close: closed.as_ref().map(|x| Close {
                cause: x.cause,
                by: x.by,
                how: x.how,
                detail: x.detail.clone(),
                result: x.result,
            }),
        }),
        (Some(ack), _) => row.attempts.push(Attempt {
            conn: c.conn,
            at: ack.at.time,
            outcome: AttemptOutcome::Refused {
                code: ack.code,
                result: ack.result,
                reason: ack.reason.clone(),
            },
        }),
        (None, Some(closed)) => {
            if let Some(connect) = &c.connect {
                row.attempts.push(Attempt {
                    conn: c.conn,
                    at: connect.at.time,
                    outcome: AttemptOutcome::Unanswered {
                        result: closed.result,
                        detail: closed.detail.clone(),
                    },
                });
            }
        }
        (None, None) => {}
    }
}
