//! The HTTPS listener: TLS (rustls, the hub's CA) then HTTP/1.1 (hyper) per connection, each on a
//! task of its own, so a slow client holds up no one. Stopping stops accepting and gives requests
//! in flight a few seconds to finish.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How long (real time) a client may take over its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// How long requests in flight get to finish when the listener stops.
const DRAIN: Duration = Duration::from_secs(5);

/// Accept until `stop`; then drain.
pub(super) async fn run(
    listener: TcpListener,
    tls: TlsAcceptor,
    app: Router,
    stop: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, _peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors or a reset before accept: try again in a moment.
                    tracing::warn!("service API: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (tls, app, watcher) = (tls.clone(), app.clone(), graceful.watcher());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE, tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!("service API: TLS handshake failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!("service API: connection ended: {e}");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
}
