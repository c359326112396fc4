//! Benchmark: in-process hub start, certificates included, until a device can complete a TLS
//! handshake and CONNECT. Peer, measured in the same run: the embedded rumqttd on its own (router
//! thread + plain-TCP listener, no TLS, no certificates) until it accepts a TCP connection.
//!
//! Run: `cargo bench -p fakehub --bench hub_start`. Goal: fakehub median ≤ 20 ms.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fakehub::testkit::{device, RawClient};
use fakehub::Hub;

const RUNS: usize = 40;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn fakehub_start() -> (Duration, Duration) {
    let t0 = Instant::now();
    let hub = Hub::builder()
        .device("d")
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let started = t0.elapsed();
    let (_c, _) = RawClient::connect_as(&hub, &device("d"), true, 60)
        .await
        .unwrap();
    let connected = t0.elapsed();
    hub.shutdown().await.unwrap();
    (started, connected)
}

async fn rumqttd_start(id: usize) -> Duration {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let t0 = Instant::now();
    let router = rumqttd::Router::new(
        id,
        rumqttd::RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 100,
            max_segment_size: 64 * 1024,
            max_segment_count: 16,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
    );
    let tx = router.spawn();
    let settings = rumqttd::ServerSettings {
        name: format!("bench-{id}"),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 5000,
            max_payload_size: 256 * 1024,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: false,
        },
    };
    let mut server = rumqttd::Server::new(settings, tx, rumqttd::protocol::v4::V4);
    let task = tokio::spawn(async move { server.start(rumqttd::LinkType::Remote).await });
    loop {
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let took = t0.elapsed();
    task.abort();
    took
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Warm up both (first-use costs: thread pools, crypto tables).
        let _ = fakehub_start().await;
        let _ = rumqttd_start(10_000).await;
        let mut ours = Vec::new();
        let mut ours_connected = Vec::new();
        let mut peer = Vec::new();
        for i in 0..RUNS {
            let (s, c) = fakehub_start().await;
            ours.push(s);
            ours_connected.push(c);
            peer.push(rumqttd_start(10_001 + i).await);
        }
        let (m, mc, mp) = (median(ours), median(ours_connected), median(peer));
        println!("hub start ({RUNS} runs, medians)");
        println!("  fakehub start (CA + server cert + TLS config + router + listener): {m:?}");
        println!("  fakehub start + first device TLS handshake and CONNACK:           {mc:?}");
        println!("  peer: bare rumqttd router + plain TCP listener, until it accepts:   {mp:?}");
        println!(
            "  ratio fakehub/rumqttd: {:.2}",
            m.as_secs_f64() / mp.as_secs_f64()
        );
        println!(
            "  goal ≤ 20 ms: {}",
            if m <= Duration::from_millis(20) {
                "met"
            } else {
                "NOT met"
            }
        );
    });
}
