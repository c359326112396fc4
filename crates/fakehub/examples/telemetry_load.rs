//! Telemetry load against a running `fakehub serve`: one device sends QoS 1 telemetry with a
//! property bag as fast as the hub acknowledges it, in pipelined batches, and prints the hub's
//! resident memory (from /proc) as it goes. How docs/HARDENING.md measures that the hub's memory
//! stays flat across a million events.
//!
//! ```text
//! telemetry_load ADDR CA_DIR HOST DEVICE KEY MESSAGES HUB_PID
//! ```
//!
//! `CA_DIR` is a `fakehub certs` directory that the hub's config names as `ca_dir`; `KEY` is the
//! device's primary key (base64) from the config.

use std::time::{Duration, Instant, SystemTime};

use fakehub::testkit::{connect_packet, MqttQoS as QoS, Packet, RawClient, Received};
use fakehub::IdentityRef;

const BATCH: u64 = 200;

fn rss_mb(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, ca_dir, host, device, key, messages, pid] = &args[..] else {
        return Err("usage: telemetry_load ADDR CA_DIR HOST DEVICE KEY MESSAGES HUB_PID".into());
    };
    let messages: u64 = messages.parse()?;
    let ca = std::fs::read_to_string(format!("{ca_dir}/ca.pem"))?;
    let ca_key = std::fs::read_to_string(format!("{ca_dir}/ca-key.pem"))?;
    let certs = fakehub::tls::HubCertificates::from_ca_pem(&ca, &ca_key, host)?;
    let mut c = RawClient::connect_tls_with(addr.parse()?, certs.client_config()?).await?;
    let who = IdentityRef {
        device_id: device.clone(),
        module_id: None,
    };
    let resource = fakehub::sas::resource_uri(host, device, None);
    let expiry = SystemTime::now() + Duration::from_secs(24 * 3600);
    let token = fakehub::sas::mint(&resource, key, None, expiry)?;
    c.send(&Packet::Connect(connect_packet(
        host, &who, &token, true, 0,
    )))
    .await?;
    match c.recv(Duration::from_secs(10)).await {
        Received::Packet(Packet::ConnAck(a)) if a.code as u8 == 0 => {}
        other => return Err(format!("no CONNACK 0: {other:?}").into()),
    }
    let start_rss = rss_mb(pid);
    println!("hub RSS before: {start_rss:.1} MB");
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < messages {
        let n = BATCH.min(messages - sent);
        for i in 0..n {
            let seq = sent + i;
            let topic = format!(
                "devices/{device}/messages/events/%24.mid=load-{seq}&%24.ct=application%2Fjson&%24.ce=utf-8&temperature=21.5&site=north-wing&seq={seq}"
            );
            let pkid = (seq % 65_000) as u16 + 1;
            c.publish(
                &topic,
                QoS::AtLeastOnce,
                pkid,
                br#"{"temperature":21.5,"humidity":40}"#,
            )
            .await?;
        }
        for _ in 0..n {
            if c.recv_until(Duration::from_secs(30), |p| matches!(p, Packet::PubAck(_)))
                .await
                .is_none()
            {
                return Err(format!("no PUBACK after {sent} messages").into());
            }
        }
        sent += n;
        if sent.is_multiple_of(100_000) {
            println!(
                "{sent} messages ({:.0}/s): hub RSS {:.1} MB",
                sent as f64 / started.elapsed().as_secs_f64(),
                rss_mb(pid)
            );
        }
    }
    c.send(&Packet::Disconnect).await?;
    let end_rss = rss_mb(pid);
    println!(
        "hub RSS after {sent} messages ({} events): {end_rss:.1} MB ({:+.1} MB) in {:.0} s",
        sent * 2,
        end_rss - start_rss,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
