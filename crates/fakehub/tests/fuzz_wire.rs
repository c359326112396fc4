//! Wire-level fuzzing: mutated packet streams (valid CONNECTs, telemetry with property bags and
//! in-band triggers, twin and method topics, SUBSCRIBE/UNSUBSCRIBE, PUBACKs, pings, DISCONNECT,
//! then bytes flipped, inserted, deleted, cut) sent to one long-lived hub over in-memory
//! connections on a paused runtime. After each stream a good device must still connect; the hub's
//! tasks must never panic; every accepted connection must end with a `closed` event and the
//! connected count must come back to 0.
//!
//! The suite runs it for a bounded time (`FAKEHUB_FUZZ_SECS`, default 20 s) with a fixed seed
//! (`FAKEHUB_FUZZ_SEED`); the long run is the ignored test `long_run` (see docs/HARDENING.md).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use fakehub::testkit::{connect_packet, device, MqttQoS as QoS, Packet, RawClient, Received};
use fakehub::{CloseCause, EventKind, Hub, HubHandle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::mqttbytes::v4 as mq;

static PANICS: AtomicUsize = AtomicUsize::new(0);
/// The planted panics are expected: not printed.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn count_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            if !QUIET.load(Ordering::SeqCst) {
                previous(info);
            }
        }));
    });
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn encode(p: &Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    p.write(&mut buf, usize::MAX).unwrap();
    buf.to_vec()
}

const TOPICS: &[&str] = &[
    "devices/fuzz/messages/events/",
    "devices/fuzz/messages/events/%24.mid=m1&a=b",
    "devices/fuzz/messages/events/%24.mid=k{n}&AzIoTHub_FaultOperationType=KillTcp&AzIoTHub_FaultOperationDelayInSecs=1",
    "devices/fuzz/messages/events/%24.mid=t{n}&AzIoTHub_FaultOperationType=ShutDownMqtt&AzIoTHub_FaultOperationDelayInSecs=1e30",
    "$iothub/twin/GET/?$rid={n}",
    "$iothub/twin/PATCH/properties/reported/?$rid={n}",
    "$iothub/methods/res/200/?$rid={n}",
    "devices/other/messages/events/",
    "devices/fuzz/messages/events/#",
];

const FILTERS: &[&str] = &[
    "devices/fuzz/messages/devicebound/#",
    "$iothub/methods/POST/#",
    "$iothub/twin/res/#",
    "$iothub/twin/PATCH/properties/desired/#",
    "#",
];

/// A plausible stream from a device, as bytes.
fn stream(hub: &HubHandle, rng: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::new();
    if rng.random_bool(0.8) {
        let expiry = hub.clock().now() + Duration::from_secs(rng.random_range(0..7200));
        let token = if rng.random_bool(0.7) {
            hub.sas_token(&device("fuzz"), expiry).unwrap()
        } else {
            format!(
                "SharedAccessSignature sr=x&sig=AAAA&se={}",
                rng.random::<u64>()
            )
        };
        let ka = rng.random_range(0..120);
        let connect = connect_packet(hub.host_name(), &device("fuzz"), &token, rng.random(), ka);
        out.extend(encode(&Packet::Connect(connect)));
    }
    for _ in 0..rng.random_range(0..8) {
        let n: u16 = rng.random_range(1..=u16::MAX);
        let p = match rng.random_range(0..6) {
            0 | 1 => {
                let topic =
                    TOPICS[rng.random_range(0..TOPICS.len())].replace("{n}", &n.to_string());
                let qos = if rng.random_bool(0.8) {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                };
                let len = rng.random_range(0..64);
                let mut p = mq::Publish::new(topic, qos, vec![b'{'; len]);
                p.pkid = if qos == QoS::AtMostOnce { 0 } else { n };
                Packet::Publish(p)
            }
            2 => {
                let mut s = mq::Subscribe::new(
                    FILTERS[rng.random_range(0..FILTERS.len())],
                    QoS::AtLeastOnce,
                );
                s.pkid = n;
                Packet::Subscribe(s)
            }
            3 => {
                let mut u = mq::Unsubscribe::new(FILTERS[rng.random_range(0..FILTERS.len())]);
                u.pkid = n;
                Packet::Unsubscribe(u)
            }
            4 => Packet::PubAck(mq::PubAck::new(n)),
            _ => Packet::PingReq,
        };
        out.extend(encode(&p));
    }
    if rng.random_bool(0.3) {
        out.extend(encode(&Packet::Disconnect));
    }
    mutate(&mut out, rng);
    out
}

/// Flip, insert, delete, duplicate or cut bytes.
fn mutate(bytes: &mut Vec<u8>, rng: &mut StdRng) {
    for _ in 0..rng.random_range(0..6) {
        if bytes.is_empty() {
            bytes.push(rng.random());
            continue;
        }
        let i = rng.random_range(0..bytes.len());
        match rng.random_range(0..5) {
            0 => bytes[i] ^= rng.random_range(1..=255u8),
            1 => {
                let n = rng.random_range(1..8);
                let insert: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                bytes.splice(i..i, insert);
            }
            2 => {
                let end = (i + rng.random_range(1..8)).min(bytes.len());
                bytes.drain(i..end);
            }
            3 => {
                let end = (i + rng.random_range(1..32)).min(bytes.len());
                let copy = bytes[i..end].to_vec();
                bytes.splice(i..i, copy);
            }
            _ => bytes.truncate(i),
        }
    }
}

/// Send one stream in random pieces, read what comes back for a while, then leave one of three ways.
async fn attack(hub: &HubHandle, rng: &mut StdRng) {
    let bytes = stream(hub, rng);
    let Ok(mut c) = RawClient::connect_memory(hub).await else {
        return;
    };
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let n = rng.random_range(1..=rest.len());
        if c.send_bytes(&rest[..n]).await.is_err() {
            break;
        }
        rest = &rest[n..];
        if rng.random_bool(0.2) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..3000))).await;
        }
    }
    for _ in 0..4 {
        if !matches!(c.recv(Duration::from_secs(2)).await, Received::Packet(_)) {
            break;
        }
    }
    match rng.random_range(0..3) {
        0 => c.close().await,
        1 => c.reset(),
        _ => drop(c),
    }
}

/// A good device connects and is answered.
async fn good_device_gets_in(hub: &HubHandle) {
    let (mut c, ack) = RawClient::connect_memory_as(hub, &device("good"), true, 60)
        .await
        .expect("the good device reaches the hub");
    assert_eq!(ack.code, mq::ConnectReturnCode::Success);
    c.send(&Packet::PingReq).await.unwrap();
    assert!(matches!(
        c.recv(Duration::from_secs(5)).await,
        Received::Packet(Packet::PingResp)
    ));
    c.send(&Packet::Disconnect).await.unwrap();
}

/// The connections the log has seen accepted and not yet closed, read as the log grows.
#[derive(Default)]
struct Open {
    conns: BTreeSet<u64>,
    closed_by_panic: usize,
}

impl Open {
    fn read(&mut self, events: &mut fakehub::EventStream) {
        while let Some(e) = events.try_next() {
            match (&e.kind, e.conn) {
                (EventKind::Accepted { .. }, Some(c)) => {
                    self.conns.insert(c);
                }
                (EventKind::Closed { cause, .. }, Some(c)) => {
                    self.closed_by_panic += usize::from(*cause == CloseCause::Internal);
                    self.conns.remove(&c);
                }
                _ => {}
            }
        }
    }
}

/// Every accepted connection has ended with a `closed` event and the count is back to 0.
async fn all_closed(hub: &HubHandle, open: &mut Open, events: &mut fakehub::EventStream) {
    let started = hub.clock().elapsed();
    while hub.connected_count() != 0 {
        assert!(
            hub.clock().elapsed() - started < Duration::from_secs(3600),
            "the connected count stays at {}",
            hub.connected_count()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Connections still closing (a linger) get a moment.
    tokio::time::sleep(Duration::from_secs(5)).await;
    open.read(events);
    assert!(
        open.conns.is_empty(),
        "connections with no `closed`: {:?}",
        open.conns
    );
}

/// What a run found.
struct Found {
    executions: u64,
    panics: usize,
    closed_by_panic: usize,
}

/// Fuzz a fresh hub for `seconds` of real time (`broken`: with a panic planted on a topic).
async fn fuzz(seconds: u64, broken: bool) -> Found {
    count_panics();
    PANICS.store(0, Ordering::SeqCst);
    QUIET.store(broken, Ordering::SeqCst);
    let seed = env_or("FAKEHUB_FUZZ_SEED", 14);
    let dir = tempfile::tempdir().unwrap();
    let mut builder = Hub::builder()
        .device("good")
        .device("fuzz")
        .memory_tls(false)
        .out_dir(dir.path());
    if broken {
        builder = builder.panic_on_topic("devices/other");
    }
    let hub = builder.build().unwrap().start().await.unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut executions = 0u64;
    let (mut open, mut events) = (Open::default(), hub.event_stream());
    while started.elapsed() < Duration::from_secs(seconds) {
        attack(&hub, &mut rng).await;
        good_device_gets_in(&hub).await;
        executions += 1;
        open.read(&mut events);
        if executions.is_multiple_of(200) {
            all_closed(&hub, &mut open, &mut events).await;
        }
    }
    all_closed(&hub, &mut open, &mut events).await;
    let closed_by_panic = open.closed_by_panic;
    let panics = PANICS.load(Ordering::SeqCst);
    println!(
        "fuzz_wire: seed {seed}, {executions} streams in {:.0} s, {} events, {panics} panics",
        started.elapsed().as_secs_f64(),
        hub.events().len()
    );
    hub.shutdown().await.unwrap();
    Found {
        executions,
        panics,
        closed_by_panic,
    }
}

#[tokio::test(start_paused = true)]
async fn mutated_streams_never_panic_the_hub_or_lose_a_close() {
    // The harness finds a planted panic (and the hub still closes and counts right)...
    let planted = fuzz(2, true).await;
    assert!(planted.panics > 0 && planted.closed_by_panic > 0);
    // ...and finds none in the hub as it is.
    let found = fuzz(env_or("FAKEHUB_FUZZ_SECS", 20), false).await;
    assert!(found.executions > 100);
    assert_eq!(
        (found.panics, found.closed_by_panic),
        (0, 0),
        "the hub panicked"
    );
}

/// The long run: `FAKEHUB_FUZZ_SECS=600 cargo test -p fakehub --release --test fuzz_wire -- \
/// --ignored --nocapture`.
#[tokio::test(start_paused = true)]
#[ignore]
async fn long_run() {
    let found = fuzz(env_or("FAKEHUB_FUZZ_SECS", 600), false).await;
    assert_eq!(
        (found.panics, found.closed_by_panic),
        (0, 0),
        "the hub panicked"
    );
}
