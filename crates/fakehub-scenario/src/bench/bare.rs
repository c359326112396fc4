//! The benchmark's third peer: a bare tokio-rustls acceptor that answers just enough MQTT for the
//! load tool (CONNACK 0 to a CONNECT, PUBACK to a QoS 1 PUBLISH, PINGRESP to a PINGREQ), with no
//! authentication, no broker and no event log. What fakehub adds to TLS and framing is measured
//! against it. It runs as `fakehub bench-peer` (hidden), a process of its own like the others, on
//! the runtime `serve` uses, with the same listen backlog.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// The largest packet the peer reads (the load tool's are under 1 KB).
const MAX_PACKET: usize = 64 * 1024;

/// Serve on `listen` until the process is killed.
pub async fn serve(listen: SocketAddr, cert: &Path, key: &Path) -> anyhow::Result<()> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let config: Arc<ServerConfig> = fakehub::tls::plain_server_config(&read(cert)?, &read(key)?)?;
    let acceptor = TlsAcceptor::from(config);
    // Bound as the hub binds its own (the same listen backlog).
    let listener = fakehub::listen_tcp(listen)?;
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            // Out of descriptors and the like: the load tool sees it as a refused connection.
            Err(_) => continue,
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let _ = connection(acceptor, tcp).await;
        });
    }
}

/// One connection: answer packets until the peer closes, sends DISCONNECT or a malformed packet.
async fn connection(acceptor: TlsAcceptor, tcp: TcpStream) -> std::io::Result<()> {
    let mut tls = acceptor.accept(tcp).await?;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut out: Vec<u8> = Vec::with_capacity(64);
    let mut chunk = [0u8; 4096];
    loop {
        // Answer every whole packet in the buffer, then write the answers at once.
        let mut used = 0;
        while let Some((kind, body, len)) = packet(buf.get(used..).unwrap_or_default()) {
            match kind >> 4 {
                1 => out.extend_from_slice(&[0x20, 2, 0, 0]),
                3 if (kind >> 1) & 3 == 1 => {
                    // Topic (2-byte length, then the name), then the packet id.
                    let topic = body
                        .get(..2)
                        .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])));
                    let pkid = topic.and_then(|t| body.get(t + 2..t + 4));
                    match pkid {
                        Some(id) => out.extend_from_slice(&[0x40, 2, id[0], id[1]]),
                        None => return Ok(()),
                    }
                }
                12 => out.extend_from_slice(&[0xD0, 0]),
                14 => return Ok(()),
                _ => {}
            }
            used += len;
        }
        buf.drain(..used);
        if !out.is_empty() {
            tls.write_all(&out).await?;
            out.clear();
        }
        if buf.len() > MAX_PACKET {
            return Ok(());
        }
        let n = tls.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

/// The first whole packet in `buf`: its first byte, its body and its whole length.
fn packet(buf: &[u8]) -> Option<(u8, &[u8], usize)> {
    let kind = *buf.first()?;
    let mut remaining: usize = 0;
    let mut shift = 0;
    let mut header = 1;
    loop {
        let b = *buf.get(header)?;
        header += 1;
        remaining |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            // More than four length bytes: malformed; a length past the limit ends it.
            return Some((0xE0, &[], buf.len()));
        }
    }
    let end = header.checked_add(remaining)?;
    let body = buf.get(header..end)?;
    Some((kind, body, end))
}

#[cfg(test)]
mod tests {
    use super::packet;

    #[test]
    fn frames_packets() {
        assert_eq!(packet(&[0xC0, 0]), Some((0xC0, &[][..], 2)));
        assert_eq!(packet(&[0x32, 3, 1, 2]), None);
        let p = [0x32, 3, 1, 2, 3, 0xC0];
        assert_eq!(packet(&p), Some((0x32, &[1u8, 2, 3][..], 5)));
        // A length of five bytes is malformed: the connection ends.
        assert_eq!(
            packet(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).map(|p| p.0),
            Some(0xE0)
        );
    }
}
