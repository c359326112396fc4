//! The connection lifecycle, folded from the event log: accept → TLS → CONNECT → CONNACK → live
//! (subscriptions, first exchange) → closed. The Connections records, the assertions and the
//! report all read connections through this one fold.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use fakehub_protocol::{IdentityRef, ResultCode};

use super::{AuthKind, CloseCause, CloseHow, Closer, Direction, Event, EventKind};

/// Where and when in the log something happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub seq: u64,
    pub time: SystemTime,
    pub elapsed: Duration,
}

impl At {
    fn of(e: &Event) -> At {
        At {
            seq: e.seq,
            time: e.time,
            elapsed: e.elapsed,
        }
    }
}

/// What the CONNECT said.
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    pub at: At,
    pub client_id: String,
    pub keep_alive: u16,
    pub clean_session: bool,
    pub auth: AuthKind,
    pub sdk: Option<String>,
    pub token_expiry: Option<SystemTime>,
    /// The hub it came to, when several hubs write the log.
    pub hub: Option<std::sync::Arc<str>>,
}

/// How the hub answered it.
#[derive(Debug, Clone, PartialEq)]
pub struct Connack {
    pub at: At,
    pub code: u8,
    pub session_present: bool,
    pub result: Option<ResultCode>,
    pub reason: Option<String>,
}

/// How the connection ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    pub at: At,
    pub by: Closer,
    pub how: CloseHow,
    pub cause: CloseCause,
    pub detail: Option<String>,
    pub result: Option<ResultCode>,
}

/// A connection to the Device Provisioning Service: who registers, and whether DPS let it in.
#[derive(Debug, Clone, PartialEq)]
pub struct DpsClient {
    pub at: At,
    pub registration_id: String,
    pub id_scope: String,
    /// The CONNACK code, once answered.
    pub connack: Option<u8>,
}

/// One connection, as far as the log has told it.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    pub conn: u64,
    pub accepted: Option<At>,
    pub peer: Option<SocketAddr>,
    /// The TLS version (a boxed `str`: a connection is boxed in a size class of 512 bytes, and a
    /// `String`'s capacity would take it to the next).
    pub tls: Option<Box<str>>,
    /// The identity, once the CONNECT named one.
    pub device: Option<std::sync::Arc<str>>,
    pub module: Option<std::sync::Arc<str>>,
    pub connect: Option<Connect>,
    pub connack: Option<Connack>,
    /// The first packet the hub answered after CONNACK 0 (a PUBACK, SUBACK or PINGRESP): the
    /// moment the device could really exchange packets.
    pub first_exchange: Option<At>,
    /// Filters acknowledged by a SUBACK, and not unsubscribed since.
    pub subscriptions: BTreeSet<String>,
    pub closed: Option<Closed>,
    /// For a provisioning connection (a DPS username): what it registered as. Such a connection is
    /// never a hub connection (no `connect`). Boxed: a fleet's log holds a million connections, and
    /// few are to DPS.
    pub dps: Option<Box<DpsClient>>,
    /// SUBSCRIBE filters waiting for their SUBACK, by packet id.
    pending_subscribes: BTreeMap<u16, Vec<String>>,
}

impl Connection {
    fn new(conn: u64) -> Connection {
        Connection {
            conn,
            accepted: None,
            peer: None,
            tls: None,
            device: None,
            module: None,
            connect: None,
            connack: None,
            first_exchange: None,
            subscriptions: BTreeSet::new(),
            closed: None,
            dps: None,
            pending_subscribes: BTreeMap::new(),
        }
    }

    /// Whether the hub accepted the CONNECT (CONNACK 0).
    pub fn connected(&self) -> bool {
        self.connack.as_ref().is_some_and(|c| c.code == 0)
    }

    /// The identity it authenticated as (or claimed).
    pub fn identity(&self) -> Option<IdentityRef> {
        self.device.as_ref().map(|d| IdentityRef {
            device_id: d.to_string(),
            module_id: self.module.as_deref().map(str::to_owned),
        })
    }

    /// Whether a connected session ended other than by the device's DISCONNECT or the hub's
    /// shutdown: a drop, in the assertions' sense.
    pub fn dropped(&self) -> bool {
        self.connected()
            && self.closed.as_ref().is_some_and(|c| {
                !matches!(
                    c.cause,
                    CloseCause::DeviceDisconnect | CloseCause::HubShutdown
                )
            })
    }

    /// A CONNECT that was never answered (outage, withheld CONNACK, throttling backlog).
    pub fn unanswered(&self) -> bool {
        self.connect.is_some() && self.connack.is_none() && self.closed.is_some()
    }
}

/// The fold: feed it events in order.
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// Each connection, with its place in `order` (boxed: a connection is a few hundred bytes,
    /// and a fleet's log holds a million of them, moved about as the table grows). A hash table:
    /// every event of a connection looks it up, and with thousands open a tree's search was a
    /// seventh of the event writer's time (the order lives in `order`).
    conns: HashMap<u64, (u64, Box<Connection>), foldhash::fast::RandomState>,
    /// Connection ids by the order their first event came (keyed so that forgetting one is as
    /// cheap as adding one: a streaming reader forgets every connection it is done with).
    order: BTreeMap<u64, u64>,
    /// How many connections have appeared.
    appeared: u64,
}

impl Lifecycle {
    pub fn new() -> Lifecycle {
        Lifecycle::default()
    }

    /// Fold a whole log.
    pub fn of<'a>(events: impl IntoIterator<Item = &'a Event>) -> Lifecycle {
        let mut l = Lifecycle::new();
        for e in events {
            l.push(e);
        }
        l
    }

    /// Take one event; returns the connection it changed, if it belongs to one.
    pub fn push(&mut self, e: &Event) -> Option<&Connection> {
        let conn = e.conn?;
        let c: &mut Connection = match self.conns.entry(conn) {
            std::collections::hash_map::Entry::Occupied(o) => &mut o.into_mut().1,
            std::collections::hash_map::Entry::Vacant(v) => {
                let place = self.appeared;
                self.appeared = self.appeared.wrapping_add(1);
                self.order.insert(place, conn);
                &mut v.insert((place, Box::new(Connection::new(conn)))).1
            }
        };
        if c.device.is_none() {
            c.device = e.device.clone();
            c.module = e.module.clone();
        }
        let at = At::of(e);
        match &e.kind {
            EventKind::Accepted { peer } => {
                c.accepted = Some(at);
                c.peer = Some(*peer);
            }
            EventKind::Tls { version } => c.tls = Some(version.as_str().into()),
            EventKind::Connect {
                client_id,
                keep_alive,
                clean_session,
                auth,
                sdk,
                token_expiry,
                ..
            } => {
                c.connect = Some(Connect {
                    at,
                    client_id: client_id.clone(),
                    keep_alive: *keep_alive,
                    clean_session: *clean_session,
                    auth: *auth,
                    sdk: sdk.clone(),
                    token_expiry: *token_expiry,
                    hub: e.hub.clone(),
                });
            }
            EventKind::Connack {
                code,
                session_present,
                result,
                reason,
            } => {
                c.connack = Some(Connack {
                    at,
                    code: *code,
                    session_present: *session_present,
                    result: *result,
                    reason: reason.clone(),
                });
            }
            EventKind::Puback {
                dir: Direction::Out,
                ..
            }
            | EventKind::Suback { .. }
            | EventKind::Pingresp
                if c.connected() && c.first_exchange.is_none() =>
            {
                c.first_exchange = Some(at);
            }
            EventKind::DpsConnect(d) => {
                c.dps = Some(Box::new(DpsClient {
                    at,
                    registration_id: d.registration_id.clone(),
                    id_scope: d.id_scope.clone(),
                    connack: None,
                }));
            }
            EventKind::DpsConnack { code, .. } => {
                if let Some(d) = c.dps.as_mut() {
                    d.connack = Some(*code);
                }
            }
            EventKind::Closed {
                by,
                how,
                cause,
                detail,
                result,
            } => {
                c.closed = Some(Closed {
                    at,
                    by: *by,
                    how: *how,
                    cause: *cause,
                    detail: detail.clone(),
                    result: *result,
                });
            }
            _ => {}
        }
        // Subscriptions: a SUBACK confirms the SUBSCRIBE with the same packet id.
        match &e.kind {
            EventKind::Subscribe { pkid, filters } => {
                let filters = filters.iter().map(|(f, _)| f.clone()).collect();
                c.pending_subscribes.insert(*pkid, filters);
            }
            EventKind::Suback { pkid, codes } => {
                let filters = c.pending_subscribes.remove(pkid).unwrap_or_default();
                for (f, code) in filters.into_iter().zip(codes) {
                    if *code != 0x80 {
                        c.subscriptions.insert(f);
                    }
                }
            }
            EventKind::Unsubscribe { filters, .. } => {
                for f in filters {
                    c.subscriptions.remove(f);
                }
            }
            _ => {}
        }
        Some(c)
    }

    /// Forget a connection (a streaming reader that is done with it).
    pub fn remove(&mut self, conn: u64) -> Option<Connection> {
        let (place, c) = self.conns.remove(&conn)?;
        self.order.remove(&place);
        Some(*c)
    }

    /// A connection by id.
    pub fn get(&self, conn: u64) -> Option<&Connection> {
        self.conns.get(&conn).map(|(_, c)| c.as_ref())
    }

    /// Every connection, in the order it first appeared.
    pub fn connections(&self) -> impl Iterator<Item = &Connection> {
        self.order.values().filter_map(|c| self.get(*c))
    }

    /// The connections of one device id (the device's own and its modules') that got as far as
    /// CONNECT, in order.
    pub fn of_device<'a>(&'a self, device: &'a str) -> impl Iterator<Item = &'a Connection> + 'a {
        self.connections()
            .filter(move |c| c.device.as_deref() == Some(device) && c.connect.is_some())
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod sizes {
    use super::{Connection, Event};

    /// A fleet's log holds millions of events and a million connections, each in an allocation
    /// of its own: an event (behind its `Arc`, 16 bytes more) in the allocator's 224-byte class
    /// and a connection (boxed) in the 512-byte class. One field more would move each up a class
    /// (256 and 640 bytes: 220 MB and 130 MB more for the 100,000-device fleet).
    #[test]
    fn events_and_connections_stay_in_their_size_classes() {
        assert!(
            std::mem::size_of::<Event>() + 16 <= 224,
            "{}",
            std::mem::size_of::<Event>()
        );
        assert!(
            std::mem::size_of::<Connection>() <= 512,
            "{}",
            std::mem::size_of::<Connection>()
        );
    }
}
