//! MQTT 3.1.1 framing over any byte stream, with `rumqttc::mqttbytes::v4` as the codec.
//!
//! Reading is cancel-safe (bytes already read stay in the buffer), so the connection task can wait
//! for the next packet inside `select!` next to its timers and control channel.

use std::io;

use bytes::BytesMut;
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
}

/// A framed MQTT connection.
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
            buf: BytesMut::with_capacity(4096),
            out: BytesMut::with_capacity(4096),
            max_packet,
        }
    }

    /// The next whole packet. Cancel-safe.
    pub async fn read_packet(&mut self) -> Result<mq::Packet, ReadError> {
        loop {
            match mq::Packet::read(&mut self.buf, self.max_packet) {
                Ok(packet) => return Ok(packet),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(mqttbytes::Error::PayloadSizeLimitExceeded(n)) => {
                    return Err(ReadError::TooLarge(n, self.max_packet))
                }
                Err(e) => return Err(ReadError::Malformed(e)),
            }
            match self.stream.read_buf(&mut self.buf).await {
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

    /// Write one packet and flush it.
    pub async fn write_packet(&mut self, packet: &mq::Packet) -> io::Result<()> {
        self.out.clear();
        packet
            .write(&mut self.out, usize::MAX)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        self.stream.write_all(&self.out).await?;
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
