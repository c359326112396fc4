//! The front door: everything device-facing.
//!
//! One listener task accepts TCP connections; each connection gets its own task (TLS handshake with a
//! timeout, MQTT framing, CONNECT and auth, keep-alive, the session with the core, and the close), so
//! a peer that stalls or misbehaves only ever holds up itself. Live sessions are indexed by client id
//! in the [`SessionTable`], which also owns the connected-devices count and each connection's control
//! channel (how the hub, faults and tests close a connection).

pub mod auth;
pub use fakehub_protocol::codec;
mod connection;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::VirtualClock;
use crate::core::Core;
use crate::events::{CloseCause, CloseHow, EventKind, EventLog, Stamp, Subject};
use crate::registry::Registry;

/// Front-door settings.
#[derive(Debug, Clone)]
pub struct FrontDoorConfig {
    pub host_name: String,
    /// Extra time after a token's `se` before the hub closes the connection.
    pub token_grace: Duration,
    /// The longest idle window the hub allows, whatever the keep-alive (IoT Hub: 1767 s).
    pub keepalive_cap: Duration,
    /// Real time a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
    /// Real time between the handshake and the CONNECT.
    pub connect_timeout: Duration,
    /// Largest MQTT packet accepted (remaining length), bytes.
    pub max_packet_size: usize,
}

/// How the hub ends a connection on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireClose {
    /// TLS close_notify, then TCP FIN.
    Fin,
    /// TCP RST (zero linger): no close_notify, no DISCONNECT.
    Rst,
}

/// A command to a live connection.
#[derive(Debug, Clone)]
pub enum Control {
    Close {
        wire: WireClose,
        cause: CloseCause,
        detail: String,
        /// The IoT Hub code to log beyond 404104 (a fault's), if any.
        result: Option<u32>,
    },
}

/// What the rest of the hub shares with every connection task.
pub struct Shared {
    pub config: FrontDoorConfig,
    pub registry: Registry,
    pub clock: VirtualClock,
    pub events: EventLog,
    pub core: Core,
    pub tls: TlsAcceptor,
    pub sessions: SessionTable,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub faults: crate::faults::FaultTable,
    /// The run's seed (fault selection by percentage).
    pub seed: u64,
    /// In-band fault triggers already applied, by client id (a resent trigger is not applied twice).
    pub inband_seen: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    next_conn: AtomicU64,
}

impl Shared {
    pub fn new(
        config: FrontDoorConfig,
        registry: Registry,
        clock: VirtualClock,
        events: EventLog,
        core: Core,
        tls: TlsAcceptor,
        seed: u64,
    ) -> Self {
        Shared {
            faults: Default::default(),
            seed,
            inband_seen: Default::default(),
            config,
            registry,
            clock,
            events: events.clone(),
            core,
            tls,
            sessions: SessionTable::new(events),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
        }
    }
}

impl Shared {
    /// Enable or disable an identity. Disabling closes its live connection (and the next CONNECTs
    /// get CONNACK 3). False when it is not registered.
    pub fn set_enabled(&self, who: &crate::registry::IdentityRef, enabled: bool) -> bool {
        if !self.registry.update(who, |i| i.enabled = enabled) {
            return false;
        }
        let subject = Subject {
            conn: None,
            device: Some(who.device_id.clone()),
            module: who.module_id.clone(),
        };
        self.events
            .emit(&subject, EventKind::IdentityStatus { enabled });
        if !enabled {
            self.sessions.control(
                &who.client_id(),
                Control::Close {
                    wire: WireClose::Fin,
                    cause: CloseCause::Disabled,
                    detail: format!("'{who}' was disabled"),
                    result: None,
                },
            );
        }
        true
    }
}

/// Accept connections until shutdown; each gets its own task.
pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
                if shared.faults.refuse_tcp() {
                    refuse(&shared, tcp, peer, id);
                    continue;
                }
                let task_shared = shared.clone();
                shared
                    .tasks
                    .spawn(connection::run(task_shared, tcp, peer, id));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off briefly rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// An outage that refuses TCP: reset the connection before anything is read from it.
fn refuse(shared: &Shared, tcp: tokio::net::TcpStream, peer: std::net::SocketAddr, id: u64) {
    let subject = Subject {
        conn: Some(id),
        ..Default::default()
    };
    shared.events.emit(&subject, EventKind::Accepted { peer });
    let _ = tcp.set_zero_linger();
    drop(tcp);
    shared.events.emit(
        &subject,
        EventKind::Closed {
            by: crate::events::Closer::Hub,
            how: CloseHow::Rst,
            cause: CloseCause::Fault,
            detail: Some("outage: the hub refuses connections".into()),
            result: None,
        },
    );
}

/// A live (authenticated) connection in the table.
struct LiveEntry {
    conn: u64,
    control: mpsc::UnboundedSender<Control>,
    done: watch::Receiver<bool>,
}

struct TableState {
    live: HashMap<String, LiveEntry>,
    connected: usize,
    /// Subscriptions of CleanSession=0 sessions between connections, by client id.
    subscriptions: HashMap<String, std::collections::BTreeSet<String>>,
}

/// Live sessions by client id, and the connected-devices count.
pub struct SessionTable {
    state: Mutex<TableState>,
    events: EventLog,
}

/// Held by a connection while it is in the table; tells waiters when it is gone.
pub struct Registration {
    pub control: mpsc::UnboundedReceiver<Control>,
    done: watch::Sender<bool>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.done.send_replace(true);
    }
}

impl SessionTable {
    fn new(events: EventLog) -> Self {
        SessionTable {
            state: Mutex::new(TableState {
                live: HashMap::new(),
                connected: 0,
                subscriptions: HashMap::new(),
            }),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, TableState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make `conn` the live connection of `client_id`. A connection already there is closed with
    /// [`CloseCause::Takeover`] (IoT Hub allows one connection per identity) and waited for, so its
    /// core session is saved before the new one opens.
    pub async fn register(&self, client_id: &str, conn: u64) -> Registration {
        loop {
            let mut waiting = {
                let mut s = self.lock();
                match s.live.get(client_id) {
                    // A live predecessor: ask it to go, then wait for it below.
                    Some(old) if old.conn != conn && !*old.done.borrow() => {
                        let _ = old.control.send(Control::Close {
                            wire: WireClose::Fin,
                            cause: CloseCause::Takeover,
                            detail: format!(
                                "a new connection ({conn}) authenticated as '{client_id}'"
                            ),
                            result: None,
                        });
                        old.done.clone()
                    }
                    _ => {
                        let (control_tx, control) = mpsc::unbounded_channel();
                        let (done, done_rx) = watch::channel(false);
                        s.live.insert(
                            client_id.to_owned(),
                            LiveEntry {
                                conn,
                                control: control_tx,
                                done: done_rx,
                            },
                        );
                        return Registration { control, done };
                    }
                }
            };
            // The old connection closes at once; the bound only protects against a wedged task,
            // which is then replaced regardless.
            let finished =
                tokio::time::timeout(Duration::from_secs(5), waiting.wait_for(|d| *d)).await;
            if finished.is_err() {
                let mut s = self.lock();
                if s.live.get(client_id).is_some_and(|e| e.conn != conn) {
                    s.live.remove(client_id);
                }
            }
        }
    }

    /// Remove `conn` (only if it is still the live one for `client_id`).
    pub fn unregister(&self, client_id: &str, conn: u64) {
        let mut s = self.lock();
        if s.live.get(client_id).is_some_and(|e| e.conn == conn) {
            s.live.remove(client_id);
        }
    }

    /// Count a connection as connected (after CONNACK 0) or no longer connected.
    pub fn set_connected(&self, up: bool) {
        self.set_connected_at(up, Stamp::Now)
    }

    /// The same, for a change caused by a deadline.
    pub fn set_connected_at(&self, up: bool, at: Stamp) {
        let mut s = self.lock();
        if up {
            s.connected += 1;
        } else {
            s.connected = s.connected.saturating_sub(1);
        }
        let count = s.connected;
        // Emitted under the table lock so the counts in the log are in order.
        self.events.emit_stamped(
            &Subject::default(),
            EventKind::ConnectedDevices { count },
            at,
        );
    }

    /// The subscriptions a new connection starts with: the saved ones, or none (and forget them) for
    /// CleanSession=1.
    pub fn subscriptions(
        &self,
        client_id: &str,
        clean: bool,
    ) -> std::collections::BTreeSet<String> {
        let mut s = self.lock();
        if clean {
            s.subscriptions.remove(client_id);
            Default::default()
        } else {
            s.subscriptions.get(client_id).cloned().unwrap_or_default()
        }
    }

    /// Save a session's subscriptions when its connection ends.
    pub fn keep_subscriptions(&self, client_id: &str, subs: std::collections::BTreeSet<String>) {
        self.lock().subscriptions.insert(client_id.to_owned(), subs);
    }

    /// The number of connected identities.
    pub fn connected(&self) -> usize {
        self.lock().connected
    }

    /// Client ids of the live connections.
    pub fn client_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().live.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Send a command to the live connection of `client_id`. False when there is none.
    pub fn control(&self, client_id: &str, cmd: Control) -> bool {
        self.lock()
            .live
            .get(client_id)
            .is_some_and(|e| e.control.send(cmd).is_ok())
    }

    /// Send the same command to every live connection whose client id `pick`s; returns how many
    /// were told.
    pub fn control_where(&self, pick: impl Fn(&str) -> bool, cmd: &Control) -> usize {
        let s = self.lock();
        s.live
            .iter()
            .filter(|(id, _)| pick(id))
            .filter(|(_, e)| e.control.send(cmd.clone()).is_ok())
            .count()
    }
}

impl WireClose {
    /// How the close looks in the `closed` event.
    pub fn how(self) -> CloseHow {
        match self {
            WireClose::Fin => CloseHow::Fin,
            WireClose::Rst => CloseHow::Rst,
        }
    }
}
