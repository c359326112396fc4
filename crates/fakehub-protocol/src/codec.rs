//! MQTT 3.1.1 framing over any byte stream, with `rumqttc::mqttbytes::v4` as the codec.
//!
//! Reading is cancel-safe (bytes already read stay in the buffer), so the connection task can wait
//! for the next packet inside `select!` next to its timers and control channel.

use std::future::Future;
use std::io;

use bytes::{Buf, BytesMut};
use rumqttc::mqttbytes::{self, v4 as mq};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why no packet could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the peer closed the connection")]
    Eof,
    #[error("the peer closed the connection {0} bytes into a packet")]
    EofInPacket(usize),
    #[error("the peer reset the connection")]
    Reset,
    #[error("read failed: {0}")]
    Io(io::Error),
    #[error("a packet of {0} bytes is over the {1}-byte limit")]
    TooLarge(usize, usize),
    #[error("malformed packet: {0}")]
    Malformed(mqttbytes::Error),
    /// A packet the codec would accept or mis-report that MQTT 3.1.1 says to refuse.
    #[error("{0}")]
    Violation(FrameViolation),
}

/// What [`check_frame`] finds wrong in a whole frame before the codec parses it: the rules of MQTT
/// 3.1.1 that `rumqttc`'s parser does not enforce (or reports as something else).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameViolation {
    /// §2.2.2: reserved bits of the fixed header must be as Table 2.2 says (0010 for PUBREL,
    /// SUBSCRIBE and UNSUBSCRIBE, 0000 for the others but PUBLISH).
    #[error(
        "{packet} with fixed-header flags {flags:04b} (MQTT 3.1.1 §2.2.2 requires {expected:04b})"
    )]
    HeaderFlags {
        packet: &'static str,
        flags: u8,
        expected: u8,
    },
    /// §3.1.2.3: the reserved CONNECT flag must be 0.
    #[error("the reserved CONNECT flag is set (MQTT 3.1.1 §3.1.2.3)")]
    ConnectReservedFlag,
    /// §3.1.2.9: a password without a user name.
    #[error("a CONNECT password without a user name (MQTT 3.1.1 §3.1.2.9)")]
    PasswordWithoutUsername,
    /// The password is binary in MQTT (§3.1.3.5), but a SAS token is text: IoT Hub refuses it.
    #[error("the CONNECT password is not UTF-8 text, so not a SAS token")]
    PasswordNotUtf8,
}

/// The fixed header of a frame at the start of `buf`: (first byte, header length, remaining
/// length), or `None` while it is incomplete or malformed (the codec reports those).
fn fixed_header(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let first = *buf.first()?;
    let mut len: usize = 0;
    for (i, b) in buf.iter().skip(1).take(4).enumerate() {
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((first, i + 2, len));
        }
    }
    None
}

/// Check a whole frame (fixed header, then at least its remaining length of bytes) for what MQTT
/// 3.1.1 refuses and `rumqttc` does not. Anything it cannot make sense of is left to the codec.
pub fn check_frame(frame: &[u8]) -> Result<(), FrameViolation> {
    let Some((first, header, remaining)) = fixed_header(frame) else {
        return Ok(());
    };
    let Some(body) = frame.get(header..header.saturating_add(remaining)) else {
        return Ok(());
    };
    let (kind, flags) = (first >> 4, first & 0x0f);
    let (packet, expected) = match kind {
        1 => ("CONNECT", 0),
        2 => ("CONNACK", 0),
        4 => ("PUBACK", 0),
        5 => ("PUBREC", 0),
        6 => ("PUBREL", 0b0010),
        7 => ("PUBCOMP", 0),
        8 => ("SUBSCRIBE", 0b0010),
        9 => ("SUBACK", 0),
        10 => ("UNSUBSCRIBE", 0b0010),
        11 => ("UNSUBACK", 0),
        12 => ("PINGREQ", 0),
        13 => ("PINGRESP", 0),
        14 => ("DISCONNECT", 0),
        _ => return Ok(()), // PUBLISH carries flags; 0 and 15 are the codec's to refuse
    };
    if flags != expected {
        return Err(FrameViolation::HeaderFlags {
            packet,
            flags,
            expected,
        });
    }
    if kind == 1 {
        check_connect(body)?;
    }
    Ok(())
}

/// The CONNECT rules, for a CONNECT of MQTT 3.1.1 (other levels are refused with CONNACK 1 first).
fn check_connect(body: &[u8]) -> Result<(), FrameViolation> {
    let mut r = Reader(body);
    if r.field() != Some(b"MQTT".as_slice()) || r.byte() != Some(4) {
        return Ok(());
    }
    let Some(flags) = r.byte() else { return Ok(()) };
    if flags & 0x01 != 0 {
        return Err(FrameViolation::ConnectReservedFlag);
    }
    let (will, user, pass) = (flags & 0x04 != 0, flags & 0x80 != 0, flags & 0x40 != 0);
    if pass && !user {
        return Err(FrameViolation::PasswordWithoutUsername);
    }
    let fields = 1 + if will { 2 } else { 0 } + usize::from(user);
    if r.bytes(2).is_none() || (0..fields).any(|_| r.field().is_none()) {
        return Ok(());
    }
    if pass {
        if let Some(password) = r.field() {
            if std::str::from_utf8(password).is_err() {
                return Err(FrameViolation::PasswordNotUtf8);
            }
        }
    }
    Ok(())
}

/// Reads MQTT's length-prefixed fields off a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }

    fn field(&mut self) -> Option<&'a [u8]> {
        let len = self.bytes(2)?;
        self.bytes(usize::from(u16::from_be_bytes([len[0], len[1]])))
    }
}

/// Read space reserved before each read: IoT traffic is small packets, and a bigger one grows the
/// buffer as it arrives.
const READ_CHUNK: usize = 1024;
/// A buffer that emptied with more capacity than this is released rather than kept (a packet
/// once large does not cost an idle connection its size for the rest of its life).
const KEEP_CAPACITY: usize = 4 * READ_CHUNK;

/// A framed MQTT connection. Its buffers start empty, grow with the packets it carries and are
/// let go while the connection waits with nothing half-read, so a held, idle connection costs
/// little.
pub struct MqttIo<S> {
    stream: S,
    buf: BytesMut,
    out: BytesMut,
    max_packet: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> MqttIo<S> {
    pub fn new(stream: S, max_packet: usize) -> Self {
        MqttIo {
            stream,
            buf: BytesMut::new(),
            out: BytesMut::new(),
            max_packet,
        }
    }

    /// The next whole packet. Cancel-safe.
    pub async fn read_packet(&mut self) -> Result<mq::Packet, ReadError> {
        loop {
            check_frame(&self.buf).map_err(ReadError::Violation)?;
            match mq::Packet::read(&mut self.buf, self.max_packet) {
                Ok(packet) => return Ok(packet),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(mqttbytes::Error::PayloadSizeLimitExceeded(n)) => {
                    return Err(ReadError::TooLarge(n, self.max_packet))
                }
                Err(e) => return Err(ReadError::Malformed(e)),
            }
            if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
                self.buf = BytesMut::new();
            }
            let read = std::future::poll_fn(|cx| {
                if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                    self.buf.reserve(READ_CHUNK);
                }
                let polled = std::pin::pin!(self.stream.read_buf(&mut self.buf)).poll(cx);
                if polled.is_pending() && self.buf.is_empty() {
                    // Nothing to read and nothing half-read: an idle connection holds no buffer.
                    self.buf = BytesMut::new();
                }
                polled
            });
            match read.await {
                Ok(0) if self.buf.is_empty() => return Err(ReadError::Eof),
                Ok(0) => return Err(ReadError::EofInPacket(self.buf.len())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(ReadError::Reset)
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    // rustls reports a TCP close without close_notify this way.
                    return Err(if self.buf.is_empty() {
                        ReadError::Eof
                    } else {
                        ReadError::EofInPacket(self.buf.len())
                    });
                }
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// Write one packet (behind any [queued](Self::queue_packet) ones) and flush.
    pub async fn write_packet(&mut self, packet: &mq::Packet) -> io::Result<()> {
        self.queue_packet(packet)?;
        self.flush_queued().await
    }

    /// Encode a packet behind those already queued; it goes out with the next
    /// [`flush_queued`](Self::flush_queued) (so the answers to packets that arrived together leave
    /// in one write, as one TLS record).
    pub fn queue_packet(&mut self, packet: &mq::Packet) -> io::Result<()> {
        let before = self.out.len();
        packet.write(&mut self.out, usize::MAX).map_err(|e| {
            self.out.truncate(before);
            io::Error::new(io::ErrorKind::InvalidData, e.to_string())
        })?;
        Ok(())
    }

    /// Whether packets wait in the queue.
    pub fn has_queued(&self) -> bool {
        !self.out.is_empty()
    }

    /// Whether a whole packet is already buffered: the next [`read_packet`](Self::read_packet)
    /// returns without waiting for the peer.
    pub fn has_whole_packet(&self) -> bool {
        fixed_header(&self.buf).is_some_and(|(_, header, remaining)| {
            header
                .checked_add(remaining)
                .is_some_and(|whole| self.buf.len() >= whole)
        })
    }

    /// Write out what is queued and flush. Cancel-safe: bytes written leave the queue as they go,
    /// so a later flush goes on where a cancelled one stopped.
    pub async fn flush_queued(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            let n = self.stream.write(&self.out).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.out.advance(n);
        }
        if self.out.capacity() > KEEP_CAPACITY {
            self.out = BytesMut::new();
        }
        self.stream.flush().await
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    pub fn into_inner(self) -> S {
        self.stream
    }
}

/// The MQTT name of a packet (`PUBLISH`, `PINGREQ`, …).
pub fn packet_name(p: &mq::Packet) -> &'static str {
    match p {
        mq::Packet::Connect(_) => "CONNECT",
        mq::Packet::ConnAck(_) => "CONNACK",
        mq::Packet::Publish(_) => "PUBLISH",
        mq::Packet::PubAck(_) => "PUBACK",
        mq::Packet::PubRec(_) => "PUBREC",
        mq::Packet::PubRel(_) => "PUBREL",
        mq::Packet::PubComp(_) => "PUBCOMP",
        mq::Packet::Subscribe(_) => "SUBSCRIBE",
        mq::Packet::SubAck(_) => "SUBACK",
        mq::Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        mq::Packet::UnsubAck(_) => "UNSUBACK",
        mq::Packet::PingReq => "PINGREQ",
        mq::Packet::PingResp => "PINGRESP",
        mq::Packet::Disconnect => "DISCONNECT",
    }
}
