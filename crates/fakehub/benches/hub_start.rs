//! Benchmark: in-process hub start, certificates included, until a device can complete a TLS
//! handshake and CONNECT. Peer, measured in the same run: a bare TLS endpoint (CA, server
//! certificate, rustls configuration, listener) until a client completes a handshake with it.
//!
//! Run: `cargo bench -p fakehub --bench hub_start`. Goal: fakehub median ≤ 20 ms.

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

/// The least any TLS MQTT endpoint must do to start: make a CA and a server certificate, build a
/// rustls server configuration and bind a listener — timed until a client completes a TLS
/// handshake with it.
async fn bare_tls_start() -> Duration {
    let t0 = Instant::now();
    let certs = fakehub::tls::HubCertificates::generate("bench.example").unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await.is_ok()
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let _tls = tokio_rustls::TlsConnector::from(certs.client_config().unwrap())
        .connect(name, tcp)
        .await
        .unwrap();
    assert!(server.await.unwrap());
    t0.elapsed()
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Warm up both (first-use costs: thread pools, crypto tables).
        let _ = fakehub_start().await;
        let _ = bare_tls_start().await;
        let mut ours = Vec::new();
        let mut ours_connected = Vec::new();
        let mut peer = Vec::new();
        for _ in 0..RUNS {
            let (s, c) = fakehub_start().await;
            ours.push(s);
            ours_connected.push(c);
            peer.push(bare_tls_start().await);
        }
        let (m, mc, mp) = (median(ours), median(ours_connected), median(peer));
        println!("hub start ({RUNS} runs, medians)");
        println!("  fakehub start (CA + server cert + TLS config + listeners):   {m:?}");
        println!("  fakehub start + first device TLS handshake and CONNACK:     {mc:?}");
        println!("  peer: bare TLS endpoint start + first TLS handshake:         {mp:?}");
        println!(
            "  ratio fakehub (to CONNACK) / bare TLS endpoint (to handshake): {:.2}",
            mc.as_secs_f64() / mp.as_secs_f64()
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
