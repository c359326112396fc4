//! Benchmark: a mass drop of 1,000 connected devices (TCP reset), from the fault to the last device
//! seeing its connection end. Peer, in the same run: a bare tokio-rustls server holding 1,000 TLS
//! connections that it resets at once (the floor: no MQTT, no sessions, no events).
//!
//! Run: `cargo bench -p fakehub --bench mass_drop`. Goal: all closed within 1 s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fakehub::faults::{Fault, FaultKind};
use fakehub::testkit::{device, RawClient};
use fakehub::Hub;
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

const N: usize = 1000;

async fn fakehub_drop() -> Duration {
    let mut b = Hub::builder();
    for i in 0..N {
        b = b.device(format!("d{i}"));
    }
    let hub = Arc::new(b.build().unwrap().start().await.unwrap());
    let gate = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..N {
        let (hub, gate) = (hub.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire().await.unwrap();
            RawClient::connect_as(&hub, &device(&format!("d{i}")), true, 1177)
                .await
                .unwrap()
                .0
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let t0 = Instant::now();
    hub.inject(Fault::new(FaultKind::MassDrop(fakehub::faults::MassDrop {
        rst: true,
    })));
    let waits: Vec<_> = clients
        .into_iter()
        .map(|mut c| tokio::spawn(async move { c.recv(Duration::from_secs(10)).await }))
        .collect();
    for w in waits {
        let _ = w.await;
    }
    t0.elapsed()
}

async fn bare_drop() -> Duration {
    let certs = fakehub::tls::HubCertificates::generate("localhost").unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config().unwrap());
    let connector = tokio_rustls::TlsConnector::from(certs.client_config().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let kill = Arc::new(tokio::sync::Notify::new());
    let k = kill.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, k) = (acceptor.clone(), k.clone());
            tokio::spawn(async move {
                let notified = k.notified();
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                notified.await;
                let _ = tls.get_ref().0.set_zero_linger();
            });
        }
    });
    let mut clients = Vec::new();
    for _ in 0..N {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
        clients.push(connector.connect(name, tcp).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    kill.notify_waiters();
    let waits: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut b = [0u8; 8];
                let _ = c.read(&mut b).await;
            })
        })
        .collect();
    for w in waits {
        let _ = w.await;
    }
    t0.elapsed()
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ours = fakehub_drop().await;
        let floor = bare_drop().await;
        println!("mass drop of {N} devices (TCP reset), until the last one sees it");
        println!(
            "  fakehub:                         {ours:?}  (goal ≤ 1 s: {})",
            if ours <= Duration::from_secs(1) {
                "met"
            } else {
                "NOT met"
            }
        );
        println!("  peer: bare tokio-rustls server:  {floor:?}");
        println!(
            "  ratio fakehub/bare: {:.2}",
            ours.as_secs_f64() / floor.as_secs_f64()
        );
    });
}
