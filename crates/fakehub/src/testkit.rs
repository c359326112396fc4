//! A raw MQTT-over-TLS client for poking a hub packet by packet in tests, over TCP or in memory
//! (the in-memory connections of a simulated run: use those under a paused runtime).
//!
//! It does nothing on its own (no pings, no acks, no reconnects), so a test decides every byte the
//! hub sees: well-formed packets through [`RawClient::send`], anything at all through
//! [`RawClient::send_bytes`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use fakehub_protocol::transport::{Secured, Stream};
use rumqttc::mqttbytes::v4 as mq;
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::events::{CloseCause, CloseHow, Closer, EventKind};
use crate::hub::HubHandle;
use crate::registry::IdentityRef;
use crate::tls::DeviceCertificate;

pub use rumqttc::mqttbytes::v4::Packet;
pub use rumqttc::mqttbytes::QoS as MqttQoS;

/// What a raw client observed when it tried to read.
#[derive(Debug)]
pub enum Received {
    Packet(mq::Packet),
    /// The hub closed the connection cleanly (TLS close_notify or FIN).
    Closed,
    /// The hub reset the connection.
    Reset,
    /// Nothing arrived in time.
    Silence,
    /// Something else went wrong reading.
    Error(io::Error),
}

/// A connection to a hub (TLS over TCP, or in memory with the hub's memory TLS setting), driven
/// packet by packet.
pub struct RawClient {
    stream: Secured<TlsStream<Stream>>,
    buf: BytesMut,
}

impl RawClient {
    /// Open TCP and TLS to the hub, trusting its CA (server name `localhost`).
    pub async fn connect_tls(hub: &HubHandle) -> io::Result<RawClient> {
        Self::connect_tls_to(hub.local_addr(), hub).await
    }

    /// Open TCP and TLS to `addr`, trusting the hub's CA.
    pub async fn connect_tls_to(addr: SocketAddr, hub: &HubHandle) -> io::Result<RawClient> {
        let config = hub
            .certificates()
            .client_config()
            .map_err(|e| io::Error::other(e.to_string()))?;
        Self::connect_tls_with(addr, config).await
    }

    /// Open TCP and TLS to `addr` with a TLS client configuration (server name `localhost`).
    pub async fn connect_tls_with(
        addr: SocketAddr,
        config: Arc<tokio_rustls::rustls::ClientConfig>,
    ) -> io::Result<RawClient> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Self::over(Stream::Tcp(tcp), Some(config)).await
    }

    /// Connect in memory, beside the hub (TLS when the hub's memory connections use it).
    pub async fn connect_memory(hub: &HubHandle) -> io::Result<RawClient> {
        use fakehub_protocol::host::InProcessHub;
        let stream = Stream::Memory(hub.memory_connector().connect()?);
        let config = if hub.memory_tls() {
            Some(
                hub.certificates()
                    .client_config()
                    .map_err(|e| io::Error::other(e.to_string()))?,
            )
        } else {
            None
        };
        Self::over(stream, config).await
    }

    async fn over(
        stream: Stream,
        tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    ) -> io::Result<RawClient> {
        let stream = match tls {
            Some(config) => {
                let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
                Secured::Tls(TlsConnector::from(config).connect(name, stream).await?)
            }
            None => Secured::Plain(stream),
        };
        Ok(RawClient {
            stream,
            buf: BytesMut::new(),
        })
    }

    /// [`Self::connect_as`] in memory.
    pub async fn connect_memory_as(
        hub: &HubHandle,
        who: &IdentityRef,
        clean_session: bool,
        keep_alive: u16,
    ) -> io::Result<(RawClient, mq::ConnAck)> {
        let client = Self::connect_memory(hub).await?;
        let expiry = hub.clock().now() + Duration::from_secs(3600);
        client
            .authenticate(hub, who, clean_session, keep_alive, expiry)
            .await
    }

    /// Send the CONNECT of `who` with a SAS token expiring at `expiry`; wait for the CONNACK.
    async fn authenticate(
        mut self,
        hub: &HubHandle,
        who: &IdentityRef,
        clean_session: bool,
        keep_alive: u16,
        expiry: SystemTime,
    ) -> io::Result<(RawClient, mq::ConnAck)> {
        let token = hub
            .sas_token(who, expiry)
            .ok_or_else(|| io::Error::other(format!("'{who}' is not registered")))?;
        let connect = connect_packet(hub.host_name(), who, &token, clean_session, keep_alive);
        self.send(&mq::Packet::Connect(connect)).await?;
        match self.recv(Duration::from_secs(5)).await {
            Received::Packet(mq::Packet::ConnAck(ack)) => Ok((self, ack)),
            other => Err(io::Error::other(format!("expected CONNACK, got {other:?}"))),
        }
    }

    /// Connect and authenticate as a registered identity with a token valid for an hour of the
    /// hub's virtual time. Returns the client and the CONNACK.
    pub async fn connect_as(
        hub: &HubHandle,
        who: &IdentityRef,
        clean_session: bool,
        keep_alive: u16,
    ) -> io::Result<(RawClient, mq::ConnAck)> {
        let expiry = hub.clock().now() + Duration::from_secs(3600);
        Self::connect_with_expiry(hub, who, clean_session, keep_alive, expiry).await
    }

    /// Like [`Self::connect_as`] with a chosen token expiry.
    pub async fn connect_with_expiry(
        hub: &HubHandle,
        who: &IdentityRef,
        clean_session: bool,
        keep_alive: u16,
        expiry: SystemTime,
    ) -> io::Result<(RawClient, mq::ConnAck)> {
        let client = Self::connect_tls(hub).await?;
        client
            .authenticate(hub, who, clean_session, keep_alive, expiry)
            .await
    }

    /// Connect as an X.509 identity: the certificate in TLS, the username and no password in the
    /// CONNECT. Returns the client and the CONNACK.
    pub async fn connect_x509(
        hub: &HubHandle,
        who: &IdentityRef,
        certificate: &DeviceCertificate,
        clean_session: bool,
    ) -> io::Result<(RawClient, mq::ConnAck)> {
        let config = certificate
            .client_config(&[hub.certificates().ca_der()])
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut client = Self::connect_tls_with(hub.local_addr(), config).await?;
        let connect = connect_packet(hub.host_name(), who, "", clean_session, 60);
        client.send(&mq::Packet::Connect(connect)).await?;
        match client.recv(Duration::from_secs(5)).await {
            Received::Packet(mq::Packet::ConnAck(ack)) => Ok((client, ack)),
            other => Err(io::Error::other(format!("expected CONNACK, got {other:?}"))),
        }
    }

    /// CONNECT (in memory) to the provisioning service `hub` serves, as registration
    /// `registration_id` signing with `key` (`skn=registration`), then subscribe to the answers.
    /// Returns the client and the CONNACK (not subscribed when refused).
    pub async fn connect_dps_memory(
        hub: &HubHandle,
        registration_id: &str,
        key: &str,
    ) -> io::Result<(RawClient, mq::ConnAck)> {
        let mut client = Self::connect_memory(hub).await?;
        let scope = hub
            .dps()
            .map(|d| d.id_scope().to_owned())
            .ok_or_else(|| io::Error::other("the hub serves no provisioning service"))?;
        let expiry = hub.clock().now() + Duration::from_secs(3600);
        let token = crate::sas::mint(
            &fakehub_protocol::dps::resource_uri(&scope, registration_id),
            key,
            Some("registration"),
            expiry,
        )
        .map_err(|e| io::Error::other(e.to_string()))?;
        let connect = dps_connect_packet(&scope, registration_id, &token);
        client.send(&mq::Packet::Connect(connect)).await?;
        let ack = match client.recv(Duration::from_secs(5)).await {
            Received::Packet(mq::Packet::ConnAck(ack)) => ack,
            other => return Err(io::Error::other(format!("expected CONNACK, got {other:?}"))),
        };
        if ack.code == mq::ConnectReturnCode::Success {
            client
                .subscribe(1, &[fakehub_protocol::dps::RESPONSE_FILTER])
                .await?;
        }
        Ok((client, ack))
    }

    /// Send a DPS request (register with `body`, or poll with the one-byte body the SDKs send) at
    /// QoS 1 and wait (up to `timeout`) for its answer: the answer's topic read, and its body.
    pub async fn dps_request(
        &mut self,
        request: &fakehub_protocol::dps::Request,
        body: &[u8],
        timeout: Duration,
    ) -> io::Result<(fakehub_protocol::dps::Answer, serde_json::Value)> {
        use fakehub_protocol::dps::{self, Request};
        let topic = match request {
            Request::Register { rid } => dps::register_topic(rid),
            Request::Poll { rid, operation_id } => dps::poll_topic(rid, operation_id),
        };
        self.publish(&topic, QoS::AtLeastOnce, 7, body).await?;
        let rid = request.rid().to_owned();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Received::Packet(mq::Packet::Publish(p)) => {
                    if p.qos == QoS::AtLeastOnce {
                        self.send(&mq::Packet::PubAck(mq::PubAck::new(p.pkid)))
                            .await?;
                    }
                    if let Ok(a) = dps::parse_answer(&p.topic) {
                        if a.rid == rid {
                            let body = serde_json::from_slice(&p.payload).map_err(|e| {
                                io::Error::other(format!("the answer is not JSON: {e}"))
                            })?;
                            return Ok((a, body));
                        }
                    }
                }
                Received::Packet(_) => continue,
                other => return Err(io::Error::other(format!("no answer: {other:?}"))),
            }
        }
    }

    /// Subscribe to filters at QoS 1 and wait (up to 5 s) for the SUBACK's return codes.
    pub async fn subscribe(
        &mut self,
        pkid: u16,
        filters: &[&str],
    ) -> io::Result<Vec<mq::SubscribeReasonCode>> {
        let mut sub = mq::Subscribe::new_many(
            filters
                .iter()
                .map(|f| mq::SubscribeFilter::new(f.to_string(), QoS::AtLeastOnce)),
        );
        sub.pkid = pkid;
        self.send(&mq::Packet::Subscribe(sub)).await?;
        match self
            .recv_until(
                Duration::from_secs(5),
                |p| matches!(p, mq::Packet::SubAck(a) if a.pkid == pkid),
            )
            .await
        {
            Some(mq::Packet::SubAck(a)) => Ok(a.return_codes),
            other => Err(io::Error::other(format!(
                "expected SUBACK {pkid}, got {other:?}"
            ))),
        }
    }

    /// Wait (up to `timeout`) for the next PUBLISH from the hub, skipping other packets.
    pub async fn next_publish(&mut self, timeout: Duration) -> Option<mq::Publish> {
        match self
            .recv_until(timeout, |p| matches!(p, mq::Packet::Publish(_)))
            .await
        {
            Some(mq::Packet::Publish(p)) => Some(p),
            _ => None,
        }
    }

    /// Send one packet.
    pub async fn send(&mut self, packet: &mq::Packet) -> io::Result<()> {
        let mut out = BytesMut::new();
        packet
            .write(&mut out, usize::MAX)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.send_bytes(&out).await
    }

    /// Send arbitrary bytes.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Publish at QoS 0 or 1.
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        pkid: u16,
        payload: &[u8],
    ) -> io::Result<()> {
        let mut p = mq::Publish::new(topic, qos, payload.to_vec());
        p.pkid = pkid;
        self.send(&mq::Packet::Publish(p)).await
    }

    /// Wait up to `timeout` (real time) for the next packet, or learn how the hub ended things.
    pub async fn recv(&mut self, timeout: Duration) -> Received {
        let read = async {
            loop {
                match mq::Packet::read(&mut self.buf, usize::MAX) {
                    Ok(p) => return Received::Packet(p),
                    Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(e) => return Received::Error(io::Error::other(e.to_string())),
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) => return Received::Closed,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Received::Reset,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Received::Closed,
                    Err(e) => return Received::Error(e),
                }
            }
        };
        tokio::time::timeout(timeout, read)
            .await
            .unwrap_or(Received::Silence)
    }

    /// Read packets until one matches, skipping others; `None` if the connection ends or time runs out.
    pub async fn recv_until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&mq::Packet) -> bool,
    ) -> Option<mq::Packet> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Received::Packet(p) if pred(&p) => return Some(p),
                Received::Packet(_) => continue,
                _ => return None,
            }
        }
    }

    /// Close with a TCP reset (zero linger), as a crashed device or a dropped NAT mapping would.
    pub fn reset(self) {
        let _ = self.stream.stream().reset_on_close();
    }

    /// Close the connection without DISCONNECT (FIN, no TLS close_notify).
    pub async fn close(mut self) {
        let _ = match &mut self.stream {
            Secured::Tls(t) => t.get_mut().0.shutdown().await,
            Secured::Plain(s) => s.shutdown().await,
        };
    }
}

/// A CONNECT as the Azure SDKs build it.
pub fn connect_packet(
    host_name: &str,
    who: &IdentityRef,
    token: &str,
    clean_session: bool,
    keep_alive: u16,
) -> mq::Connect {
    let mut c = mq::Connect::new(who.client_id());
    c.keep_alive = keep_alive;
    c.clean_session = clean_session;
    let user = match &who.module_id {
        Some(m) => format!(
            "{host_name}/{}/{m}/?api-version=2021-04-12&DeviceClientType=fakehub-testkit",
            who.device_id
        ),
        None => format!(
            "{host_name}/{}/?api-version=2021-04-12&DeviceClientType=fakehub-testkit",
            who.device_id
        ),
    };
    c.login = Some(mq::Login::new(user, token));
    c
}

/// A CONNECT to the provisioning service as the SDKs build it (`skn=registration` token).
pub fn dps_connect_packet(id_scope: &str, registration_id: &str, token: &str) -> mq::Connect {
    let mut c = mq::Connect::new(registration_id);
    c.keep_alive = 60;
    c.clean_session = true;
    let user = fakehub_protocol::dps::username(id_scope, registration_id, "fakehub-testkit");
    c.login = Some(mq::Login::new(user, token));
    c
}

/// Start a hub for `myhub.azure-devices.net` with these devices registered.
pub async fn start_hub(devices: &[&str]) -> Result<HubHandle, crate::HubError> {
    let mut b = crate::Hub::builder().host_name("myhub.azure-devices.net");
    for d in devices {
        b = b.device(*d);
    }
    b.build()?.start().await
}

/// Wait (up to `timeout`, real time) for the next `closed` event of a device's connection and
/// return who closed it, how and why.
pub async fn closed(
    hub: &HubHandle,
    device_id: &str,
    timeout: Duration,
) -> Option<(Closer, CloseHow, CloseCause)> {
    let e = hub
        .event_stream()
        .wait_for(timeout, |e| {
            e.device.as_deref() == Some(device_id) && matches!(e.kind, EventKind::Closed { .. })
        })
        .await?;
    match e.kind {
        EventKind::Closed { by, how, cause, .. } => Some((by, how, cause)),
        _ => None,
    }
}

/// The identity of a device (no module).
pub fn device(id: &str) -> IdentityRef {
    IdentityRef {
        device_id: id.to_owned(),
        module_id: None,
    }
}

/// An HTTPS client for a hub's service API (and anything served beside it), trusting the hub's
/// CA: one request per connection, HTTP/1.1. For tests; the official SDKs are the real judges.
pub struct ServiceClient {
    addr: SocketAddr,
    tls: Arc<tokio_rustls::rustls::ClientConfig>,
    host: String,
    /// The `Authorization` header sent with every request (`None`: none).
    pub authorization: Option<String>,
}

/// An answer of the service API.
#[derive(Debug, Clone)]
pub struct ServiceResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl ServiceResponse {
    /// The body as JSON (`null` when empty or not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl ServiceClient {
    /// A client of the API at `addr`, authenticated with a fresh token (valid one hour of real
    /// time) of the hub's `iothubowner` policy.
    pub fn owner(hub: &HubHandle, addr: SocketAddr) -> io::Result<ServiceClient> {
        let policy = hub
            .registry()
            .policy(crate::OWNER_POLICY)
            .ok_or_else(|| io::Error::other("the hub has no iothubowner policy"))?;
        let mut client = Self::anonymous(hub, addr)?;
        client.authorization = Some(service_token(
            hub.host_name(),
            crate::OWNER_POLICY,
            &policy.keys.primary_key,
        )?);
        Ok(client)
    }

    /// A client that sends no `Authorization` header (set [`Self::authorization`]).
    pub fn anonymous(hub: &HubHandle, addr: SocketAddr) -> io::Result<ServiceClient> {
        let tls = hub
            .certificates()
            .client_config()
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(ServiceClient {
            addr,
            tls,
            host: hub.host_name().to_owned(),
            authorization: None,
        })
    }

    /// Send a request (`body` JSON when given) with extra headers; the whole answer.
    pub async fn request(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> io::Result<ServiceResponse> {
        use http_body_util::{BodyExt, Full};
        let tcp = TcpStream::connect(self.addr).await?;
        let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(io::Error::other)?;
        tokio::spawn(conn);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header("host", &self.host);
        if let Some(auth) = &self.authorization {
            request = request.header("authorization", auth);
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let bytes = match body {
            Some(b) => {
                request = request.header("content-type", "application/json; charset=utf-8");
                b.to_string().into_bytes()
            }
            None => Vec::new(),
        };
        let request = request
            .body(Full::new(bytes::Bytes::from(bytes)))
            .map_err(io::Error::other)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(io::Error::other)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(io::Error::other)?
            .to_bytes()
            .to_vec();
        Ok(ServiceResponse {
            status,
            headers,
            body,
        })
    }
}

/// A service SAS token for `policy` (`sr` = the host name, as the service SDKs sign it), valid
/// one hour of real time.
pub fn service_token(host: &str, policy: &str, key: &str) -> io::Result<String> {
    let expiry = SystemTime::now() + Duration::from_secs(3600);
    crate::sas::mint(host, key, Some(policy), expiry).map_err(|e| io::Error::other(e.to_string()))
}
