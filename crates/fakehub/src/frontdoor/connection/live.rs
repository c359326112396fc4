//! Live: an authenticated connection attached to its session. The hub reads the device's packets
//! and answers them, sends what the services queue for it, drops it at its token's expiry plus
//! grace or after a keep-alive window of silence, and closes it on request — with the active
//! faults consulted before every packet.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fakehub_protocol::codec::ReadError;
use fakehub_protocol::properties::PropertyBag;
use fakehub_protocol::topics::{self, DevicePublish};
use fakehub_protocol::IdentityRef;
use rumqttc::mqttbytes::v4 as mq;
use rumqttc::mqttbytes::QoS;
use tokio::sync::{mpsc, watch};

use super::ending::Ending;
use super::{packet_name, Guard, Io, State};
use crate::clock::{Fired, Timer};
use crate::events::{CloseCause, CloseHow, Direction, EventKind, Stamp};
use crate::faults::{FaultHooks, PacketVerdict};
use crate::sessions::{Attached, CloseSlot, Outgoing, WireClose};

/// IoT Hub lets a device hold at most this many subscriptions.
pub const MAX_SUBSCRIPTIONS: usize = 5;
/// The largest device-to-cloud message IoT Hub accepts.
pub const MAX_TELEMETRY_BYTES: usize = 256 * 1024;

/// `min(1.5 × keep-alive, cap)`; a keep-alive of 0 leaves only the cap.
pub(crate) fn keepalive_window(keep_alive: u16, cap: Duration) -> Duration {
    if keep_alive == 0 {
        cap
    } else {
        (Duration::from_secs(u64::from(keep_alive)) * 3 / 2).min(cap)
    }
}

/// A live connection.
pub(super) struct Live {
    io: Io,
    who: IdentityRef,
    client_id: String,
    window: Duration,
    /// Virtual elapsed time of the last packet from the device.
    last_inbound: Duration,
    keepalive: (Duration, Timer),
    token: Option<Timer>,
    hooks: FaultHooks,
    outgoing: mpsc::UnboundedReceiver<Box<Outgoing>>,
    /// What the hub could not send yet (a fault stops its writes).
    held: VecDeque<Outgoing>,
    resend: Vec<Outgoing>,
    close: Arc<CloseSlot>,
    /// Dropped when the connection is gone: a successor waiting to take over goes on.
    _gone: watch::Sender<bool>,
}

/// What handling one packet led to.
type Step = Result<(), Ending>;

/// What a live connection's wait ended with.
enum Woke {
    Close(crate::sessions::CloseRequest),
    Token(Fired),
    KeepAlive,
    Read(Result<mq::Packet, ReadError>),
    Out(Option<Box<Outgoing>>),
}

impl Live {
    pub fn new(
        guard: &Guard,
        io: Io,
        who: IdentityRef,
        client_id: String,
        keep_alive: u16,
        expiry: Option<SystemTime>,
        attached: Attached,
    ) -> Live {
        let shared = &guard.shared;
        let clock = &shared.clock;
        let window = keepalive_window(keep_alive, shared.config.keepalive_cap);
        let last_inbound = clock.elapsed();
        let deadline = last_inbound.saturating_add(window);
        Live {
            io,
            who,
            window,
            last_inbound,
            keepalive: (deadline, clock.timer_elapsed(deadline)),
            token: expiry.map(|at| clock.timer(at)),
            hooks: shared.faults.hooks(&client_id),
            client_id,
            outgoing: attached.outgoing,
            held: VecDeque::new(),
            resend: attached.resend,
            close: attached.close,
            _gone: attached.gone,
        }
    }

    /// Register the connection's socket with the runtime this runs on (see
    /// [`crate::HubBuilder::live_runtime`]).
    pub fn rehome(&mut self) -> std::io::Result<()> {
        self.io.get_mut().stream_mut().rehome()
    }

    fn end(self, ending: Ending, fired: Option<Fired>) -> State {
        let Live { io, .. } = self;
        State::Closing(Some(io), ending, fired)
    }

    /// Serve the connection until it ends.
    pub async fn serve(mut self: Box<Self>, guard: &mut Guard) -> State {
        let shared = &guard.shared;
        let clock = shared.clock.clone();
        for out in std::mem::take(&mut self.resend) {
            if let Err(ending) = Box::pin(self.send_outgoing(guard, out)).await {
                return self.end(ending, None);
            }
        }
        // A shutdown reaches a live connection as a close request (the hub asks every session's
        // connection once it has cancelled): the loop below never polls the hub-wide token, whose
        // lock every connection would take for every packet. One that went live after that
        // request sees the token here.
        if shared.shutdown.is_cancelled() {
            return self.end(Ending::shutdown(), None);
        }
        // Made once, not per packet: waiting for a request registers once.
        let close = self.close.clone();
        let mut requested = std::pin::pin!(close.requested());
        loop {
            if let Some(r) = self.close.pending() {
                return self.end(Ending::requested(r), None);
            }
            // The faults are consulted before every packet (so a fault holds from the moment it is
            // injected); nothing wakes the connection for a change of faults alone.
            self.hooks.refresh(&shared.faults);
            if self.hooks.writes() {
                if let Some(out) = self.held.pop_front() {
                    if let Err(ending) = Box::pin(self.send_outgoing(guard, out)).await {
                        return self.end(ending, None);
                    }
                    continue;
                }
            }
            // Answers queued while more packets waited whole go out once none waits.
            if !self.io.has_whole_packet() {
                if let Err(ending) = self.flush(guard).await {
                    return self.end(ending, None);
                }
            }
            // One wait for whatever comes first. The device's next packet is looked at before
            // the others when nothing that goes before it has happened (a close request, either
            // deadline: all three seen without registering anything): a woken connection with a
            // packet to read then polls nothing else, and only the wait that follows its answer
            // registers with the close request, the deadlines and the queue. When several are
            // ready at once, a close request goes first, then the token's deadline, the
            // keep-alive deadline, the read and the queue.
            let woke = {
                let close = &self.close;
                let io = &mut self.io;
                let token = &mut self.token;
                let keepalive = &mut self.keepalive.1;
                let outgoing = &mut self.outgoing;
                let mut requested = requested.as_mut();
                std::future::poll_fn(move |cx| {
                    if let Some(r) = close.pending() {
                        return Poll::Ready(Woke::Close(r));
                    }
                    // A deadline that has fired makes its wait below ready: the read waits.
                    let due = token.as_ref().is_some_and(Timer::has_fired) || keepalive.has_fired();
                    if !due {
                        // A blackhole or half-open connection still reads, and drops what it
                        // reads (`inbound`): the device's packets are lost, as on a dead network.
                        if let Poll::Ready(read) = std::pin::pin!(io.read_packet()).poll(cx) {
                            return Poll::Ready(Woke::Read(read));
                        }
                    }
                    if let Poll::Ready(r) = requested.as_mut().poll(cx) {
                        return Poll::Ready(Woke::Close(r));
                    }
                    if let Some(t) = token.as_mut() {
                        if let Poll::Ready(fired) = std::pin::pin!(t.wait()).poll(cx) {
                            return Poll::Ready(Woke::Token(fired));
                        }
                    }
                    if std::pin::pin!(keepalive.wait()).poll(cx).is_ready() {
                        return Poll::Ready(Woke::KeepAlive);
                    }
                    outgoing.poll_recv(cx).map(Woke::Out)
                })
                .await
            };
            let step = match woke {
                Woke::Close(r) => Err(Ending::requested(r)),
                Woke::Token(fired) => {
                    let grace = shared.config.token_grace;
                    let detail = format!(
                        "the SAS token expired at {} and the {grace:?} grace passed",
                        crate::clock::rfc3339_seconds(
                            fired.at.checked_sub(grace).unwrap_or(fired.at)
                        ),
                    );
                    let ending = Ending::hub(WireClose::Fin, CloseCause::TokenExpired, detail)
                        .at(Stamp::Wall(fired.at));
                    // The guard holds a jump at the deadline until the records are written.
                    return self.end(ending, Some(fired));
                }
                Woke::KeepAlive => {
                    let deadline = self.last_inbound.saturating_add(self.window);
                    if deadline > self.keepalive.0 {
                        // The device spoke since: wait for the new deadline.
                        self.keepalive = (deadline, clock.timer_elapsed(deadline));
                        Ok(())
                    } else {
                        let detail = format!("no packet from the device for {:?}", self.window);
                        Err(Ending::hub_timeout(CloseCause::KeepAliveTimeout, detail)
                            .at(Stamp::Elapsed(self.keepalive.0)))
                    }
                }
                Woke::Read(read) => self.read(guard, read).await,
                Woke::Out(Some(out)) => Box::pin(self.send_outgoing(guard, *out)).await,
                Woke::Out(None) => Err(Ending::hub(
                    WireClose::Fin,
                    CloseCause::CoreClosed,
                    "the session was taken away",
                )),
            };
            if let Err(ending) = step {
                return self.end(ending, None);
            }
        }
    }

    /// What reading the device's next packet gave. Boxed while it runs: a held connection waits
    /// in the loop, and its task then costs the wait, not the largest handling.
    fn read<'a>(
        &'a mut self,
        guard: &'a Guard,
        read: Result<mq::Packet, ReadError>,
    ) -> std::pin::Pin<Box<impl Future<Output = Step> + 'a>> {
        Box::pin(async move {
            match read {
                Ok(packet) => self.inbound(guard, packet).await,
                Err(e) => Err(Ending::from_read(e)),
            }
        })
    }

    /// A packet from the device.
    async fn inbound(&mut self, guard: &Guard, packet: mq::Packet) -> Step {
        let shared = &guard.shared;
        // A fault that started since the read began already holds: a blackholed connection's
        // packet never reached the hub.
        self.hooks.refresh(&shared.faults);
        if !self.hooks.reads() {
            return Ok(());
        }
        if let Some(r) = self.close.pending() {
            return Err(Ending::requested(r));
        }
        let verdict = self.hooks.inbound(&packet);
        if matches!(verdict, PacketVerdict::Delay(_)) {
            // The answers queued so far do not wait behind a delayed packet.
            self.flush(guard).await?;
        }
        if !apply(verdict, guard, &packet).await {
            return Ok(());
        }
        self.last_inbound = shared.clock.elapsed();
        match packet {
            mq::Packet::Publish(p) => self.publish(guard, p).await,
            mq::Packet::PubAck(ack) => {
                guard.emit(EventKind::Puback {
                    dir: Direction::In,
                    pkid: ack.pkid,
                });
                // An acknowledgement of nothing in flight is ignored.
                shared.sessions.puback(&self.client_id, ack.pkid);
                Ok(())
            }
            mq::Packet::Subscribe(s) => self.subscribe(guard, s).await,
            mq::Packet::Unsubscribe(u) => {
                guard.emit(EventKind::Unsubscribe {
                    pkid: u.pkid,
                    filters: u.topics.clone(),
                });
                shared.sessions.unsubscribe(&self.client_id, &u.topics);
                // MQTT 3.1.1 §3.10.4: answered even when no filter matched.
                let ack = mq::Packet::UnsubAck(mq::UnsubAck::new(u.pkid));
                self.send(guard, ack, EventKind::Unsuback { pkid: u.pkid })
                    .await
            }
            mq::Packet::PingReq => {
                guard.emit(EventKind::Ping);
                self.send(guard, mq::Packet::PingResp, EventKind::Pingresp)
                    .await
            }
            mq::Packet::Disconnect => {
                guard.emit(EventKind::DisconnectPacket);
                Err(Ending::disconnect())
            }
            other => Err(Ending::violation(format!(
                "unexpected {} from the device",
                packet_name(&other)
            ))),
        }
    }

    async fn publish(&mut self, guard: &Guard, mut p: mq::Publish) -> Step {
        let shared = &guard.shared;
        #[cfg(feature = "testkit")]
        if let Some(marker) = &shared.config.panic_on_topic {
            assert!(
                !p.topic.contains(marker.as_str()),
                "injected panic (testkit)"
            );
        }
        let classified = topics::classify_publish(&self.who, &p.topic);
        let mut properties = match &classified {
            Ok(DevicePublish::Telemetry(bag)) => bag.clone(),
            _ => PropertyBag::default(),
        };
        if p.retain {
            // IoT Hub does not retain: it marks the message instead.
            properties
                .application
                .insert("mqtt-retain".into(), "true".into());
        }
        // The event takes the topic: what is wanted of it later is found first. A trigger's key
        // when the message has no id is its topic and size, made only for a message that names
        // a fault.
        let forbidden = p.topic.contains(['#', '+', '\0']);
        let fallback_key = match &classified {
            Ok(DevicePublish::Telemetry(bag)) if crate::faults::inband::names_a_fault(bag) => {
                Some(format!("{}:{}", p.topic, p.payload.len()))
            }
            _ => None,
        };
        guard.emit(EventKind::Publish {
            dir: Direction::In,
            topic: std::mem::take(&mut p.topic),
            qos: p.qos as u8,
            pkid: p.pkid,
            dup: p.dup,
            retain: p.retain,
            size: p.payload.len(),
            message_id: properties.message_id().map(str::to_owned),
            properties: Box::new(properties),
        });
        if p.qos == QoS::ExactlyOnce {
            return Err(Ending::violation(
                "QoS 2 PUBLISH: IoT Hub closes the connection",
            ));
        }
        if forbidden {
            return Err(Ending::violation(
                "a PUBLISH topic may not contain wildcards or NUL (MQTT 3.1.1 §4.7)",
            ));
        }
        let request = classified.map_err(|e| Ending::violation(e.to_string()))?;
        if p.payload.len() > MAX_TELEMETRY_BYTES {
            return Err(Ending::violation(format!(
                "a {}-byte message is over IoT Hub's {MAX_TELEMETRY_BYTES}-byte limit",
                p.payload.len()
            )));
        }
        p.retain = false;
        match &request {
            DevicePublish::Telemetry(bag) => {
                let fresh = crate::faults::inband::trigger(
                    || shared.fault_ctx(),
                    &shared.triggers,
                    &self.client_id,
                    bag,
                    || fallback_key.unwrap_or_default(),
                );
                if fresh {
                    // An in-band fault trigger: not acknowledged (the fault follows).
                    return Ok(());
                }
            }
            other => shared
                .services
                .on_device_request(&self.who, other, &p.payload),
        }
        if p.qos == QoS::AtLeastOnce {
            let ack = mq::Packet::PubAck(mq::PubAck::new(p.pkid));
            let event = EventKind::Puback {
                dir: Direction::Out,
                pkid: p.pkid,
            };
            return self.send(guard, ack, event).await;
        }
        Ok(())
    }

    async fn subscribe(&mut self, guard: &Guard, s: mq::Subscribe) -> Step {
        let shared = &guard.shared;
        guard.emit(EventKind::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .iter()
                .map(|f| (f.path.clone(), f.qos as u8))
                .collect(),
        });
        let mut filters = Vec::with_capacity(s.filters.len());
        for f in &s.filters {
            let kind = topics::classify_filter(&self.who, &f.path)
                .map_err(|e| Ending::violation(e.to_string()))?;
            filters.push((f.path.clone(), kind, f.qos as u8));
        }
        let names: Vec<String> = filters.iter().map(|(f, _, _)| f.clone()).collect();
        let distinct = shared
            .sessions
            .distinct_filters_with(&self.client_id, &names);
        if distinct > MAX_SUBSCRIPTIONS {
            return Err(Ending::violation(format!(
                "{distinct} subscriptions: IoT Hub allows {MAX_SUBSCRIPTIONS}"
            )));
        }
        let granted = shared.sessions.subscribe(&self.client_id, &filters);
        let ack = mq::SubAck::new(
            s.pkid,
            granted
                .iter()
                .map(|q| match q {
                    0 => mq::SubscribeReasonCode::Success(QoS::AtMostOnce),
                    1 => mq::SubscribeReasonCode::Success(QoS::AtLeastOnce),
                    _ => mq::SubscribeReasonCode::Failure,
                })
                .collect(),
        );
        let event = EventKind::Suback {
            pkid: s.pkid,
            codes: granted,
        };
        self.send(guard, mq::Packet::SubAck(ack), event).await
    }

    /// Send a message the services queued (its event shows its properties).
    async fn send_outgoing(&mut self, guard: &Guard, out: Outgoing) -> Step {
        let shared = &guard.shared;
        self.hooks.refresh(&shared.faults);
        if !self.hooks.writes() {
            self.held.push_back(out);
            return Ok(());
        }
        let bag = out
            .topic
            .split_once("/messages/devicebound/")
            .map(|(_, bag)| PropertyBag::parse(bag))
            .unwrap_or_default();
        let event = EventKind::Publish {
            dir: Direction::Out,
            topic: out.topic.clone(),
            qos: out.qos,
            pkid: out.pkid,
            dup: out.dup,
            retain: false,
            size: out.payload.len(),
            message_id: bag.message_id().map(str::to_owned),
            properties: Box::new(bag),
        };
        let qos = if out.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let mut p = mq::Publish::from_bytes(out.topic, qos, Bytes::clone(&out.payload));
        p.pkid = out.pkid;
        p.dup = out.dup;
        self.send(guard, mq::Packet::Publish(p), event).await
    }

    /// Send a packet: the faults may withhold or delay it; it is recorded just before it is
    /// written, so the event precedes anything the device does in response. While more of the
    /// device's packets wait whole in the read buffer it is queued, to go out with their answers
    /// in one write (one TLS record, one send): a device with several messages in flight gets
    /// their PUBACKs together, as a broker that answers a read at a time sends them.
    async fn send(&mut self, guard: &Guard, packet: mq::Packet, event: EventKind) -> Step {
        let verdict = self.hooks.outbound(&packet);
        if matches!(verdict, PacketVerdict::Delay(_)) {
            // What is queued does not wait behind a delayed packet.
            self.flush(guard).await?;
        }
        if !apply(verdict, guard, &packet).await {
            return Ok(());
        }
        guard.emit(event);
        if let Err(e) = self.io.queue_packet(&packet) {
            return Err(self.after_write_failure(guard, e).await);
        }
        if self.io.has_whole_packet() {
            return Ok(());
        }
        self.flush(guard).await
    }

    /// Write out what is queued. A device that does not read for a whole keep-alive window is
    /// closed (its fault: it stopped reading).
    async fn flush(&mut self, guard: &Guard) -> Step {
        if !self.io.has_queued() {
            return Ok(());
        }
        // Most writes complete at once (the socket has room): they arm no timer and register
        // with neither the close slot nor the hub-wide shutdown token, which every connection
        // would otherwise do for every packet.
        let first = {
            let mut write = std::pin::pin!(self.io.flush_queued());
            super::poll_once(&mut write).await
        };
        let written = match first {
            Poll::Ready(r) => r,
            // The rest waits on the heap, as do the rare endings below: every held connection's
            // task is as large as the largest thing its loop awaits in place.
            Poll::Pending => Box::pin(self.flush_waiting(guard)).await?,
        };
        match written {
            Ok(()) => Ok(()),
            Err(e) => Err(Box::pin(self.after_write_failure(guard, e)).await),
        }
    }

    /// A flush whose first write found the socket full: the write again, from where the first one
    /// stopped (the queue advances only past what a write took, and a write that is not ready
    /// takes nothing), until it completes, the connection is to close, or the device has read
    /// nothing for the keep-alive window.
    async fn flush_waiting(&mut self, guard: &Guard) -> Result<std::io::Result<()>, Ending> {
        let shared = &guard.shared;
        let window = self.window;
        let close = self.close.clone();
        tokio::select! {
            biased;
            // A device that does not read must not hold up a takeover or the hub's shutdown.
            _ = shared.shutdown.cancelled() => Err(Ending::shutdown()),
            r = close.requested() => Err(Ending::requested(r)),
            r = self.io.flush_queued() => Ok(r),
            _ = shared.clock.sleep(window) => {
                let detail = format!("the device read nothing for {window:?}");
                Err(Ending::hub_timeout(CloseCause::KeepAliveTimeout, detail))
            }
        }
    }

    /// A write failed because the device is gone. It may have sent DISCONNECT just before closing
    /// (a graceful end that crossed our write): read what it left before deciding how it ended.
    async fn after_write_failure(&mut self, guard: &Guard, e: std::io::Error) -> Ending {
        let clock = guard.shared.clock.clone();
        let left = tokio::select! {
            biased;
            r = async {
                loop {
                    match self.io.read_packet().await {
                        Ok(mq::Packet::Disconnect) => return true,
                        Ok(_) => continue,
                        Err(ReadError::Eof | ReadError::Reset | ReadError::Io(_) | ReadError::EofInPacket(_) | ReadError::TooLarge(..) | ReadError::Malformed(_) | ReadError::Violation(_)) => return false,
                    }
                }
            } => r,
            _ = clock.sleep(Duration::from_millis(100)) => false,
        };
        if left {
            guard.emit(EventKind::DisconnectPacket);
            return Ending::device(CloseHow::Disconnect, CloseCause::DeviceDisconnect, None);
        }
        Ending::device(
            CloseHow::Rst,
            CloseCause::DeviceClosed,
            Some(format!("write failed: {e}")),
        )
    }
}

/// Carry out what the faults said about a packet: go on at once, go on after a delay, or (false)
/// withhold it, recorded as `withheld`.
pub(super) async fn apply(verdict: PacketVerdict, guard: &Guard, packet: &mq::Packet) -> bool {
    match verdict {
        PacketVerdict::Pass => true,
        PacketVerdict::Delay(d) => {
            guard.shared.clock.sleep(d).await;
            true
        }
        PacketVerdict::Withhold => {
            guard.emit(EventKind::Withheld {
                packet: packet_name(packet).to_ascii_lowercase(),
                pkid: pkid_of(packet),
            });
            false
        }
    }
}

fn pkid_of(p: &mq::Packet) -> Option<u16> {
    match p {
        mq::Packet::Publish(x) if x.qos != QoS::AtMostOnce => Some(x.pkid),
        mq::Packet::PubAck(x) => Some(x.pkid),
        mq::Packet::SubAck(x) => Some(x.pkid),
        mq::Packet::Subscribe(x) => Some(x.pkid),
        mq::Packet::UnsubAck(x) => Some(x.pkid),
        mq::Packet::Unsubscribe(x) => Some(x.pkid),
        _ => None,
    }
}
