//! The IoT Hub service REST API, as the official service SDKs (Python `azure-iot-hub`, Node
//! `azure-iothub`) call it, on an HTTPS listener of its own: the identity registry
//! (`registry`), twins (`twins`), direct methods (`methods`) and the C2D purge, with IoT
//! Hub's shapes, status codes, ETags and errors ([`error`]), authenticated with shared access
//! policies ([`auth`]). Cloud-to-device *sending* is AMQP in both SDKs and is not here: the
//! control API of `fakehub serve` offers it.
//!
//! A layer over [`HubHandle`]: every change goes through the hub's own service side, so REST,
//! scenarios and the Rust API do the same thing. Other routes can be served next to these on the
//! same listener (`fakehub serve` adds its control API, with the same [`auth`]):
//!
//! ```no_run
//! # async fn demo(hub: std::sync::Arc<fakehub::HubHandle>) -> Result<(), fakehub::service_api::ServiceApiError> {
//! use fakehub::service_api;
//! let listener = service_api::bind(&hub, "127.0.0.1:443".parse().unwrap()).await?;
//! let api = listener.serve(service_api::router(hub.clone()));
//! // … hub.service_connection_string() for the SDKs …
//! api.shutdown().await;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod body;
pub mod error;
mod methods;
mod registry;
mod server;
mod twins;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::tls::TlsError;
use crate::HubHandle;
use error::ApiError;

/// The api-version the service SDKs send (Python 2.7.0, Node 1.16.6) and the hub models.
pub const API_VERSION: &str = "2021-04-12";

/// Why the service API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceApiError {
    #[error("cannot listen on {addr} for the service API: {error}{hint}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
        hint: &'static str,
    },
    #[error("service API certificate: {0}")]
    Tls(#[from] TlsError),
}

/// The REST routes, answering for `hub`.
pub fn router(hub: Arc<HubHandle>) -> Router {
    registry::routes()
        .merge(twins::routes())
        .merge(methods::routes())
        .layer(axum::middleware::from_fn(require_api_version))
        .with_state(hub)
}

/// IoT Hub refuses a call without `api-version`.
async fn require_api_version(request: Request, next: Next) -> Response {
    let has = request.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|p| p.starts_with("api-version=") && p.len() > 12)
    });
    if !has {
        return ApiError::invalid(format!(
            "the query parameter api-version is missing (the hub models {API_VERSION})"
        ))
        .into_response();
    }
    next.run(request).await
}

/// The ETag an `If-Match` header asks for, without quotes (or a weak `W/`); `None` for `*` (both
/// SDKs send it quoted, `"*"`) or no header.
pub(crate) fn if_match(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::IF_MATCH)?.to_str().ok()?.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    let v = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v);
    (v != "*").then(|| v.to_owned())
}

/// A bound HTTPS listener, not serving yet.
pub struct Listener {
    tcp: TcpListener,
    tls: TlsAcceptor,
    local_addr: SocketAddr,
    stop: CancellationToken,
}

/// Bind the service API's listener on `addr` with a server certificate from the hub's CA that
/// names the hub's host name, the loopback names and `addr`'s IP.
pub async fn bind(hub: &HubHandle, addr: SocketAddr) -> Result<Listener, ServiceApiError> {
    let bind_error = |error: std::io::Error| {
        let hint = if error.kind() == std::io::ErrorKind::PermissionDenied && addr.port() < 1024 {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE: run as root, grant the \
             capability, or choose another port; the Python service SDK takes HostName=host:port, \
             the Node one always uses 443)"
        } else if error.kind() == std::io::ErrorKind::AddrInUse {
            " (another program listens there: stop it or choose another address)"
        } else {
            ""
        };
        ServiceApiError::Bind { addr, error, hint }
    };
    let tcp = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local_addr = tcp.local_addr().map_err(bind_error)?;
    let config = hub
        .certificates()
        .https_server_config(hub.host_name(), &[local_addr.ip().to_string()])?;
    Ok(Listener {
        tcp,
        tls: TlsAcceptor::from(config),
        local_addr,
        stop: CancellationToken::new(),
    })
}

impl Listener {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Cancelled when the API stops: long requests (streams, long polls) end on it.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Serve `app` (e.g. [`router`], merged with other routes) until [`ServiceApi::shutdown`].
    pub fn serve(self, app: Router) -> ServiceApi {
        let app = app.fallback(not_found);
        let task = tokio::spawn(server::run(self.tcp, self.tls, app, self.stop.clone()));
        ServiceApi {
            local_addr: self.local_addr,
            stop: self.stop,
            task: Some(task),
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        404000,
        "NotFound",
        "no such resource in the IoT Hub service API (see docs/SERVICE-API.md)",
    )
}

/// A serving service API.
pub struct ServiceApi {
    local_addr: SocketAddr,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ServiceApi {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop accepting, let requests in flight finish (a few seconds at most), and free the port.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServiceApi {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_takes_quoted_and_bare_etags_and_the_wildcard() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::IF_MATCH, v.parse().unwrap());
            if_match(&m)
        };
        assert_eq!(h("\"*\""), None);
        assert_eq!(h("*"), None);
        assert_eq!(h("\"MTIz\""), Some("MTIz".to_owned()));
        assert_eq!(h("MTIz"), Some("MTIz".to_owned()));
        assert_eq!(h("W/\"MTIz\""), Some("MTIz".to_owned()));
        assert_eq!(if_match(&HeaderMap::new()), None);
    }
}
