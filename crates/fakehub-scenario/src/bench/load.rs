//! The load tool: MQTT 3.1.1 devices over TLS (tokio-rustls, full handshakes), CONNECT with a SAS
//! token, QoS 1 PUBLISH. Packets are framed by hand so that the tool costs little next to the
//! server it measures, and it speaks only what both servers answer alike (CONNACK, PUBACK).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fakehub::sas;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

/// One device's TLS connection, past CONNACK.
pub type Conn = TlsStream<TcpStream>;

/// Where the devices connect, and how they authenticate.
pub struct Target {
    pub addr: SocketAddr,
    pub tls: TlsConnector,
    /// The IoT Hub host name the usernames and token audiences name.
    pub host_name: String,
    /// Every device's primary key (base64).
    pub key: String,
}

/// Why a device is not connected.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("CONNACK refused the connection with return code {0}")]
    Refused(u8),
    #[error("the server answered CONNECT with something other than a CONNACK")]
    NotConnack,
    #[error("cannot mint a SAS token: {0}")]
    Token(String),
}

impl Target {
    /// TCP, a full TLS handshake, CONNECT (clean session, SAS token valid for an hour), CONNACK.
    pub async fn connect(&self, id: &str) -> Result<Conn, ConnectError> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        let mut tls = self.tls.connect(name, tcp).await?;
        let username = format!("{}/{id}/?api-version=2021-04-12", self.host_name);
        let resource = sas::resource_uri(&self.host_name, id, None);
        let expiry = SystemTime::now() + Duration::from_secs(3600);
        let token = sas::mint(&resource, &self.key, None, expiry)
            .map_err(|e| ConnectError::Token(e.to_string()))?;
        tls.write_all(&connect_packet(id, &username, &token, 1177))
            .await?;
        tls.flush().await?;
        let mut connack = [0u8; 4];
        tls.read_exact(&mut connack).await?;
        match connack {
            [0x20, 2, _, 0] => Ok(tls),
            [0x20, 2, _, code] => Err(ConnectError::Refused(code)),
            _ => Err(ConnectError::NotConnack),
        }
    }
}

/// MQTT's variable-length "remaining length".
fn put_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.get(..usize::from(len)).unwrap_or(s));
}

/// CONNECT, MQTT 3.1.1, clean session, with a username and a password.
fn connect_packet(client_id: &str, username: &str, password: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + username.len() + password.len());
    put_str(&mut body, b"MQTT");
    body.push(4);
    body.push(0x80 | 0x40 | 0x02);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    put_str(&mut body, client_id.as_bytes());
    put_str(&mut body, username.as_bytes());
    put_str(&mut body, password.as_bytes());
    let mut packet = vec![0x10];
    put_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    packet
}

/// PUBLISH at QoS 1.
fn publish_packet(topic: &str, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x32];
    put_length(&mut packet, 2 + topic.len() + 2 + payload.len());
    put_str(&mut packet, topic.as_bytes());
    packet.extend_from_slice(&pkid.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// What a held device tells the benchmark.
#[derive(Debug)]
pub enum Held {
    /// Connected (again), at this instant.
    Up(Instant),
    /// Its connection ended.
    Down,
    /// A try failed and will be made again after a backoff.
    Retry,
    /// It stopped trying: the first connection failed this way (after `attempts`).
    GaveUp(ConnectError),
}

/// Hold one device's connection until `stop`: connect (at most `attempts` tries the first time,
/// then for as long as it takes), wait for the connection to end, reconnect. Every try takes a
/// permit of `gate` (the tool's concurrency), and a failed try waits a jittered backoff.
pub async fn hold(
    target: Arc<Target>,
    id: String,
    gate: Arc<Semaphore>,
    attempts: u32,
    tell: mpsc::UnboundedSender<Held>,
    stop: CancellationToken,
) {
    let mut first = true;
    loop {
        let mut tries = 0u32;
        let mut conn = loop {
            tries = tries.saturating_add(1);
            let attempt = async {
                let _permit = gate.acquire().await;
                target.connect(&id).await
            };
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = attempt => r,
            };
            match result {
                Ok(c) => break c,
                Err(e) if first && (tries >= attempts || matches!(e, ConnectError::Refused(_))) => {
                    let _ = tell.send(Held::GaveUp(e));
                    return;
                }
                Err(_) => {
                    let _ = tell.send(Held::Retry);
                    let ceiling = Duration::from_millis(50)
                        .saturating_mul(1 << tries.min(5))
                        .min(Duration::from_secs(1));
                    let wait = ceiling.mul_f64(rand::random::<f64>());
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        };
        first = false;
        let _ = tell.send(Held::Up(Instant::now()));
        let mut sink = [0u8; 64];
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = conn.read(&mut sink) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                },
            }
        }
        let _ = tell.send(Held::Down);
    }
}

/// How a publishing run went.
#[derive(Debug, Default)]
pub struct Published {
    pub sent: u64,
    pub acked: u64,
    /// PUBLISH → PUBACK, one per acknowledged message.
    pub latencies: Vec<Duration>,
    /// From the first PUBLISH to the last PUBACK.
    pub elapsed: Duration,
}

impl Published {
    pub fn rate(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile of the latencies (0 when there are none).
    pub fn quantile(&mut self, q: f64) -> Duration {
        self.latencies.sort_unstable();
        let n = self.latencies.len();
        if n == 0 {
            return Duration::ZERO;
        }
        let i = ((n as f64 * q).ceil() as usize).clamp(1, n) - 1;
        self.latencies.get(i).copied().unwrap_or_default()
    }
}

/// QoS 1 telemetry for `duration` from every connection, each with at most `inflight`
/// unacknowledged messages; paced at `rate` messages/s over all connections, or unpaced. Waits for
/// the last PUBACKs (at most 5 s) and hands the connections back.
pub async fn publish(
    conns: Vec<(String, Conn)>,
    inflight: usize,
    rate: Option<f64>,
    duration: Duration,
) -> (Vec<(String, Conn)>, Published) {
    let n = conns.len().max(1);
    let start = Instant::now();
    // `--publish-for` is a person's input: a duration past the end of time publishes until it.
    let far = start + Duration::from_secs(86_400 * 365 * 100);
    let deadline = start.checked_add(duration).map_or(far, |d| d.min(far));
    let period = rate.map(|r| Duration::from_secs_f64(n as f64 / r.max(1e-3)));
    let mut tasks = Vec::with_capacity(conns.len());
    for (k, (id, conn)) in conns.into_iter().enumerate() {
        // Spread the paced publishers' schedules over one period.
        let offset = period.map_or(Duration::ZERO, |p| p.mul_f64(k as f64 / n as f64));
        tasks.push(tokio::spawn(publish_one(
            id,
            conn,
            inflight,
            period,
            start + offset,
            deadline,
        )));
    }
    let mut back = Vec::new();
    let mut total = Published::default();
    let mut last_ack = start;
    for t in tasks {
        if let Ok(Ok((id, conn, p, last))) = t.await {
            back.push((id, conn));
            total.sent += p.sent;
            total.acked += p.acked;
            total.latencies.extend(p.latencies);
            last_ack = last_ack.max(last);
        }
    }
    total.elapsed = last_ack.saturating_duration_since(start);
    (back, total)
}

type OneRun = (String, Conn, Published, Instant);

async fn publish_one(
    id: String,
    conn: Conn,
    inflight: usize,
    period: Option<Duration>,
    first: Instant,
    deadline: Instant,
) -> io::Result<OneRun> {
    let topic = format!("devices/{id}/messages/events/");
    let payload = [b'x'; 64];
    let (mut rd, mut wr) = tokio::io::split(conn);
    let window = Arc::new(Semaphore::new(inflight.max(1)));
    let sent_at: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    let writer = {
        let (window, sent_at) = (window.clone(), sent_at.clone());
        async move {
            let mut sent = 0u64;
            let mut next = first;
            loop {
                if let Some(p) = period {
                    tokio::time::sleep_until(next.into()).await;
                    next += p;
                }
                let Ok(permit) = window.acquire().await else {
                    break;
                };
                permit.forget();
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let pkid = (sent % 65_535) as u16 + 1;
                if let Ok(mut q) = sent_at.lock() {
                    q.push_back(now);
                }
                wr.write_all(&publish_packet(&topic, pkid, &payload))
                    .await?;
                sent += 1;
            }
            wr.flush().await?;
            Ok::<_, io::Error>((wr, sent))
        }
    };
    let mut writer = tokio::spawn(writer);
    let mut p = Published::default();
    let mut last = first;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    // Read PUBACKs until the writer is done and every message is acknowledged (or 5 s after the
    // deadline).
    let mut writer_result = None;
    let give_up = deadline + Duration::from_secs(5);
    loop {
        if let Some((_, sent)) = &writer_result {
            if p.acked >= *sent {
                break;
            }
        }
        let read = tokio::select! {
            r = rd.read(&mut chunk) => r?,
            w = &mut writer, if writer_result.is_none() => {
                writer_result = Some(w.map_err(io::Error::other)??);
                continue;
            }
            _ = tokio::time::sleep_until(give_up.into()) => break,
        };
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(chunk.get(..read).unwrap_or_default());
        // Whole frames: type, remaining length, body.
        let mut used = 0;
        while let Some((kind, len, _)) = frame(buf.get(used..).unwrap_or_default()) {
            if kind == 0x40 {
                let now = Instant::now();
                if let Some(at) = sent_at.lock().ok().and_then(|mut q| q.pop_front()) {
                    p.latencies.push(now - at);
                }
                p.acked += 1;
                last = now;
                window.add_permits(1);
            }
            used += len;
        }
        buf.drain(..used);
    }
    let (wr, sent) = match writer_result {
        Some(w) => w,
        None => writer.await.map_err(io::Error::other)??,
    };
    p.sent = sent;
    Ok((id, rd.unsplit(wr), p, last))
}

/// The first whole frame of `bytes`: its packet type bits, its whole length, and its body.
fn frame(bytes: &[u8]) -> Option<(u8, usize, &[u8])> {
    let first = *bytes.first()?;
    let mut len = 0usize;
    let mut shift = 0;
    let mut i = 1;
    loop {
        let b = *bytes.get(i)?;
        len |= usize::from(b & 0x7f) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return None;
        }
    }
    let body = bytes.get(i..i + len)?;
    Some((first & 0xf0, i + len, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let p = publish_packet("devices/d/messages/events/", 7, &[1; 200]);
        let (kind, len, body) = frame(&p).unwrap();
        assert_eq!((kind, len), (0x30, p.len()));
        assert_eq!(&body[body.len() - 200..], &[1; 200][..]);
        assert!(frame(&p[..p.len() - 1]).is_none());
        let c = connect_packet("d", "h/d/?api-version=2021-04-12", "tok", 60);
        assert_eq!(frame(&c).unwrap().1, c.len());
    }
}
