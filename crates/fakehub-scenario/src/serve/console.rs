//! What `serve` says on its console while it runs: one line per refused connection, with its
//! reason (the hub's reasons carry no secrets: never a key, token or signature).
//!
//! A connection is refused when it ends without a CONNACK 0: a CONNACK ≠ 0 (bad credentials, a
//! disabled or unknown device, a fault), a TLS handshake that failed, no CONNECT in time, or a
//! fault that reset or held it. The line is printed when the connection closes, so it holds the
//! whole story once.

use std::collections::HashMap;
use std::net::SocketAddr;

use fakehub::{Event, EventKind};

#[derive(Default)]
struct Attempt {
    peer: Option<SocketAddr>,
    client: Option<String>,
    accepted: bool,
    /// A CONNACK ≠ 0: the code, the IoT Hub result and the reason.
    refusal: Option<String>,
}

/// The kinds of events the console reads.
pub fn follows(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Accepted { .. }
            | EventKind::Connect { .. }
            | EventKind::Connack { .. }
            | EventKind::Closed { .. }
    )
}

/// Follows the event log and turns each refused connection into one console line.
#[derive(Default)]
pub struct Console {
    open: HashMap<u64, Attempt>,
}

impl Console {
    /// Take one event; the line to print when it ends a refused connection.
    pub fn line(&mut self, e: &Event) -> Option<String> {
        let conn = e.conn?;
        match &e.kind {
            EventKind::Accepted { peer } => {
                self.open.entry(conn).or_default().peer = Some(*peer);
                None
            }
            EventKind::Connect { client_id, .. } => {
                self.open.entry(conn).or_default().client = Some(client_id.clone());
                None
            }
            EventKind::Connack {
                code: 0,
                result: None,
                ..
            } => {
                self.open.entry(conn).or_default().accepted = true;
                None
            }
            EventKind::Connack {
                code,
                result,
                reason,
                ..
            } => {
                let result = result.map(|r| format!(", {r}")).unwrap_or_default();
                let reason = reason.as_deref().unwrap_or("no reason given");
                self.open.entry(conn).or_default().refusal =
                    Some(format!("CONNACK {code}{result}: {reason}"));
                None
            }
            EventKind::Closed { cause, detail, .. } => {
                let a = self.open.remove(&conn).unwrap_or_default();
                if a.accepted {
                    return None;
                }
                let who = a
                    .client
                    .or_else(|| match (&e.device, &e.module) {
                        (Some(d), Some(m)) => Some(format!("{d}/{m}")),
                        (Some(d), None) => Some(d.to_string()),
                        _ => None,
                    })
                    .map(|c| format!("'{c}'"))
                    .unwrap_or_else(|| "a connection".to_owned());
                let from = a.peer.map(|p| format!(" from {p}")).unwrap_or_default();
                let why = a.refusal.unwrap_or_else(|| {
                    let cause = serde_json::to_value(cause)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    match detail {
                        Some(d) => format!("closed before CONNACK ({cause}): {d}"),
                        None => format!("closed before CONNACK ({cause})"),
                    }
                });
                Some(format!("fakehub: refused {who}{from}: {why}"))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fakehub::events::{CloseHow, Closer};
    use fakehub::{CloseCause, ResultCode};
    use std::time::{Duration, SystemTime};

    fn event(conn: u64, device: Option<&str>, kind: EventKind) -> Event {
        Event {
            seq: 0,
            time: SystemTime::UNIX_EPOCH,
            elapsed: Duration::ZERO,
            conn: Some(conn),
            device: device.map(Into::into),
            module: None,
            hub: None,
            kind,
        }
    }

    fn closed(cause: CloseCause, detail: Option<&str>) -> EventKind {
        EventKind::Closed {
            by: Closer::Hub,
            how: CloseHow::Fin,
            cause,
            detail: detail.map(str::to_owned),
            result: None,
        }
    }

    #[test]
    fn one_line_per_refused_connection_and_none_for_accepted_ones() {
        let mut c = Console::default();
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let connect = EventKind::Connect {
            client_id: "sensor-1".into(),
            username: "h/sensor-1/?api-version=x".into(),
            keep_alive: 60,
            clean_session: true,
            auth: fakehub::events::AuthKind::Sas,
            sdk: None,
            token_expiry: None,
            will: false,
        };
        let mut lines = Vec::new();
        let kinds = [
            (1, None, EventKind::Accepted { peer }),
            (1, Some("sensor-1"), connect.clone()),
            (
                1,
                Some("sensor-1"),
                EventKind::Connack {
                    code: 5,
                    session_present: false,
                    result: Some(ResultCode::IoTHubUnauthorized),
                    reason: Some("the SAS signature does not match its keys".into()),
                },
            ),
            (1, Some("sensor-1"), closed(CloseCause::Refused, None)),
            (2, None, EventKind::Accepted { peer }),
            (2, Some("sensor-1"), connect),
            (
                2,
                Some("sensor-1"),
                EventKind::Connack {
                    code: 0,
                    session_present: false,
                    result: None,
                    reason: None,
                },
            ),
            (
                2,
                Some("sensor-1"),
                closed(CloseCause::DeviceDisconnect, None),
            ),
            (3, None, EventKind::Accepted { peer }),
            (
                3,
                None,
                closed(
                    CloseCause::TlsFailed,
                    Some("TLS handshake failed: bad cert"),
                ),
            ),
        ];
        for (conn, device, kind) in kinds {
            lines.extend(c.line(&event(conn, device, kind)));
        }
        assert_eq!(
            lines,
            [
                "fakehub: refused 'sensor-1' from 127.0.0.1:5000: CONNACK 5, 401003 IoTHubUnauthorized: the SAS signature does not match its keys",
                "fakehub: refused a connection from 127.0.0.1:5000: closed before CONNACK (tls_failed): TLS handshake failed: bad cert",
            ]
        );
        assert!(c.open.is_empty(), "closed connections are forgotten");
    }
}
