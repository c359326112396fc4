//! The byte streams a hub and its devices talk over: TCP, or an in-memory pipe for in-process
//! devices (no socket, no file descriptor, and — under a paused runtime — no wake-up that the
//! runtime cannot see), each optionally under TLS.
//!
//! An in-memory stream tells a reset from an orderly close as TCP does: after
//! [`Stream::reset_on_close`], dropping one end makes the other end's reads fail with
//! `ConnectionReset` instead of returning end-of-file.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How much an in-memory stream buffers in each direction before a writer waits.
const MEMORY_BUFFER: usize = 64 * 1024;

/// One end of an in-memory connection.
pub struct MemoryStream {
    io: DuplexStream,
    /// Set by this end when it is to reset rather than close.
    reset_mine: Arc<AtomicBool>,
    /// Set by the other end when it reset.
    reset_theirs: Arc<AtomicBool>,
}

impl MemoryStream {
    /// Two connected ends.
    pub fn pair() -> (MemoryStream, MemoryStream) {
        let (a, b) = tokio::io::duplex(MEMORY_BUFFER);
        let (ra, rb) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        (
            MemoryStream {
                io: a,
                reset_mine: ra.clone(),
                reset_theirs: rb.clone(),
            },
            MemoryStream {
                io: b,
                reset_mine: rb,
                reset_theirs: ra,
            },
        )
    }
}

impl AsyncRead for MemoryStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before => {
                // End of stream: a reset if the other end said so.
                if self.reset_theirs.load(Ordering::Acquire) {
                    Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
                } else {
                    Poll::Ready(Ok(()))
                }
            }
            other => other,
        }
    }
}

impl MemoryStream {
    /// A write's result as TCP would give it: writing to a reset peer fails with a reset.
    fn as_tcp(&self, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Err(e))
                if e.kind() == io::ErrorKind::BrokenPipe
                    && self.reset_theirs.load(Ordering::Acquire) =>
            {
                Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for MemoryStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.as_tcp(written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.as_tcp(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A connection: TCP or in memory.
pub enum Stream {
    Tcp(TcpStream),
    Memory(MemoryStream),
}

impl Stream {
    /// Make dropping this stream reset the connection (TCP: zero linger, so the close sends RST;
    /// in memory: the other end's next read fails with `ConnectionReset`).
    pub fn reset_on_close(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(t) => t.set_zero_linger(),
            Stream::Memory(m) => {
                m.reset_mine.store(true, Ordering::Release);
                Ok(())
            }
        }
    }

    /// Turn off Nagle's algorithm (TCP only).
    pub fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(t) => t.set_nodelay(true),
            Stream::Memory(_) => Ok(()),
        }
    }

    /// Whether this is an in-memory stream.
    pub fn is_memory(&self) -> bool {
        matches!(self, Stream::Memory(_))
    }

    /// Move a TCP stream to the runtime this runs on: tokio ties a socket to the runtime that
    /// registered it, and a connection handed to another runtime must be registered there. The
    /// socket itself stays open throughout (a duplicate descriptor holds it while the old one is
    /// deregistered and closed); in-memory streams belong to no runtime and are left alone.
    /// Call it from a task of the runtime that is to serve the stream. On an error the stream is
    /// as it was (still registered where it was, and usable).
    pub fn rehome(&mut self) -> io::Result<()> {
        let Stream::Tcp(tcp) = self else {
            return Ok(());
        };
        let fd = std::os::fd::AsFd::as_fd(tcp).try_clone_to_owned()?;
        let std = std::net::TcpStream::from(fd);
        std.set_nonblocking(true)?;
        // Dropping the old stream deregisters it from its runtime before closing its descriptor.
        *tcp = TcpStream::from_std(std)?;
        Ok(())
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Memory($s) => {
                let $s = Pin::new($s);
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    /// Several buffers in one system call. tokio-rustls writes what a TLS session has to send
    /// (a handshake flight is several records) as a vector of buffers: without this, the default
    /// wrote the first buffer alone, one `send` per record.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(t) => t.is_write_vectored(),
            Stream::Memory(m) => m.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// A stream under TLS, or plain (in-memory connections may skip TLS: it is not under test there).
/// `T` is tokio-rustls' server or client stream over a [`Stream`].
pub enum Secured<T> {
    Tls(T),
    Plain(Stream),
}

/// Access to the [`Stream`] under a TLS session.
pub trait OverStream {
    fn stream(&self) -> &Stream;
    fn stream_mut(&mut self) -> &mut Stream;
}

impl OverStream for tokio_rustls::server::TlsStream<Stream> {
    fn stream(&self) -> &Stream {
        self.get_ref().0
    }
    fn stream_mut(&mut self) -> &mut Stream {
        self.get_mut().0
    }
}

impl OverStream for tokio_rustls::client::TlsStream<Stream> {
    fn stream(&self) -> &Stream {
        self.get_ref().0
    }
    fn stream_mut(&mut self) -> &mut Stream {
        self.get_mut().0
    }
}

impl<T: OverStream> OverStream for Box<T> {
    fn stream(&self) -> &Stream {
        T::stream(self)
    }
    fn stream_mut(&mut self) -> &mut Stream {
        T::stream_mut(self)
    }
}

impl<T: OverStream> Secured<T> {
    /// The connection under any TLS.
    pub fn stream(&self) -> &Stream {
        match self {
            Secured::Tls(t) => t.stream(),
            Secured::Plain(s) => s,
        }
    }

    /// The connection under any TLS, to change (see [`Stream::rehome`]).
    pub fn stream_mut(&mut self) -> &mut Stream {
        match self {
            Secured::Tls(t) => t.stream_mut(),
            Secured::Plain(s) => s,
        }
    }
}

macro_rules! delegate_secured {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Secured::Tls($s) => {
                let $s = Pin::new($s);
                $e
            }
            Secured::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
        }
    };
}

impl<T: AsyncRead + Unpin> AsyncRead for Secured<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate_secured!(self, s => s.poll_read(cx, buf))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Secured<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate_secured!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate_secured!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Secured::Tls(t) => t.is_write_vectored(),
            Secured::Plain(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate_secured!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate_secured!(self, s => s.poll_shutdown(cx))
    }
}

/// Where in-process devices connect: the hub end of an in-memory network.
pub struct MemoryListener {
    rx: mpsc::UnboundedReceiver<(MemoryStream, SocketAddr)>,
}

/// How an in-process device reaches the hub. Cheap to clone.
#[derive(Clone)]
pub struct MemoryConnector {
    tx: mpsc::UnboundedSender<(MemoryStream, SocketAddr)>,
    next_port: Arc<AtomicU32>,
}

/// A new in-memory network: devices connect through the connector, the hub accepts on the listener.
pub fn memory_network() -> (MemoryConnector, MemoryListener) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        MemoryConnector {
            tx,
            next_port: Arc::new(AtomicU32::new(0)),
        },
        MemoryListener { rx },
    )
}

/// The address an in-memory connection's hub end reports for its device: `127.0.0.1` and a port
/// counting up from 1 (so records look like records, and two connections never share one).
fn memory_peer(n: u32) -> SocketAddr {
    let port = u16::try_from(n % u32::from(u16::MAX))
        .unwrap_or(0)
        .saturating_add(1);
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

impl MemoryConnector {
    /// Open a connection to the hub. Refused when the hub no longer accepts.
    pub fn connect(&self) -> io::Result<MemoryStream> {
        let (device, hub) = MemoryStream::pair();
        let n = self.next_port.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send((hub, memory_peer(n)))
            .map_err(|_| io::Error::from(io::ErrorKind::ConnectionRefused))?;
        Ok(device)
    }
}

/// In-memory routes by host name, for in-process devices that reach more than one endpoint (the
/// provisioning service, then the hub it assigned): each name leads to one hub's connector. Names
/// compare case-insensitively, as host names do. Cheap to clone (the routes are shared).
#[derive(Clone, Default)]
pub struct MemoryRoutes {
    routes: Arc<std::sync::RwLock<std::collections::BTreeMap<String, MemoryConnector>>>,
}

impl MemoryRoutes {
    /// Let `host` lead to `connector`.
    pub fn insert(&self, host: &str, connector: MemoryConnector) {
        self.routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_ascii_lowercase(), connector);
    }

    /// Where `host` leads, if anywhere.
    pub fn get(&self, host: &str) -> Option<MemoryConnector> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&host.to_ascii_lowercase())
            .cloned()
    }
}

impl MemoryListener {
    /// The next connection, or `None` once every connector is gone.
    pub async fn accept(&mut self) -> Option<(MemoryStream, SocketAddr)> {
        self.rx.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_memory_stream_closes_or_resets_like_tcp() -> io::Result<()> {
        let (connector, mut listener) = memory_network();
        let mut device = connector.connect()?;
        let (hub, peer) = listener.accept().await.ok_or(io::ErrorKind::NotFound)?;
        assert!(peer.ip().is_loopback());
        let mut hub = Stream::Memory(hub);
        hub.write_all(b"hello").await?;
        let mut buf = [0u8; 5];
        device.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"hello");
        hub.reset_on_close()?;
        drop(hub);
        let err = device.read(&mut buf).await.err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::ConnectionReset));

        let mut device = connector.connect()?;
        let (hub, _) = listener.accept().await.ok_or(io::ErrorKind::NotFound)?;
        drop(hub);
        assert_eq!(
            device.read(&mut buf).await?,
            0,
            "an orderly close is end-of-file"
        );
        drop(listener);
        assert!(connector.connect().is_err(), "refused once the hub is gone");
        Ok(())
    }

    /// Write `parts` with one vectored write and read back what arrived.
    async fn one_vectored_write(
        mut from: impl AsyncWrite + Unpin,
        mut to: impl AsyncRead + Unpin,
    ) -> Vec<u8> {
        let parts: [&[u8]; 3] = [b"server hello ", b"certificate ", b"finished"];
        let slices = parts.map(io::IoSlice::new);
        assert!(from.is_write_vectored());
        let written =
            std::future::poll_fn(|cx| Pin::new(&mut from).poll_write_vectored(cx, &slices))
                .await
                .unwrap();
        assert_eq!(written, parts.concat().len(), "every buffer in one call");
        drop(from);
        let mut got = Vec::new();
        to.read_to_end(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn a_vectored_write_sends_every_buffer_at_once() {
        // TLS hands its records over as several buffers: TCP and memory streams take them all,
        // and so does a connection without TLS.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (server, _) = accepted.unwrap();
        let got = one_vectored_write(Stream::Tcp(server), client.unwrap()).await;
        assert_eq!(got, b"server hello certificate finished");

        let (a, b) = MemoryStream::pair();
        let got = one_vectored_write(Stream::Memory(a), b).await;
        assert_eq!(got, b"server hello certificate finished");

        let (a, b) = MemoryStream::pair();
        let plain: Secured<tokio_rustls::server::TlsStream<Stream>> =
            Secured::Plain(Stream::Memory(a));
        let got = one_vectored_write(plain, b).await;
        assert_eq!(got, b"server hello certificate finished");
    }
}
