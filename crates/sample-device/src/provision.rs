//! Registering with the Device Provisioning Service over MQTT, as the official SDKs do: CONNECT as
//! the registration (SAS with `skn=registration`), subscribe to `$dps/registrations/res/#`,
//! register, then poll while the registration is `assigning`; 429 and 5xx are retried. Every wait
//! follows the answer's `retry-after` (2 s when there is none, the SDKs' default), unless the
//! device has the `ignore-retry-after` bug (a fixed second). A registration still `assigning`
//! after `dps_timeout` (10 s with `short-dps-timeout`) is given up; so is one the service fails,
//! disables, or refuses with a 4xx.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fakehub_protocol::clock::{DeviceClock, Fired};
use fakehub_protocol::dps::{self, OperationStatus, Request};
use fakehub_protocol::sas;
use rumqttc::mqttbytes::v4 as mq;
use rumqttc::mqttbytes::QoS;
use tokio_rustls::rustls::ClientConfig;

use crate::connection_string::ConnectionString;
use crate::device::{Bug, DeviceEvent, DeviceOptions, Dial, Io};

/// The SDKs' wait when an answer has no `retry-after`.
const DEFAULT_WAIT: Duration = Duration::from_secs(2);
/// The wait of a device that ignores `retry-after`.
const FIXED_WAIT: Duration = Duration::from_secs(1);
/// How long `short-dps-timeout` waits for an assignment.
const SHORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The lifetime of the registration's SAS token.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Where and as whom a device registers. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Provisioning {
    /// The provisioning endpoint (the TCP and TLS host name).
    pub host: String,
    /// Its port; the assigned hub is reached on the same port.
    pub port: u16,
    pub id_scope: String,
    pub registration_id: String,
    /// The device's symmetric key: its individual enrollment's, or derived from its group's.
    pub key: String,
}

impl std::fmt::Debug for Provisioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioning")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("id_scope", &self.id_scope)
            .field("registration_id", &self.registration_id)
            .finish_non_exhaustive()
    }
}

/// One registration, with what the device it belongs to has.
pub(crate) struct Client<'a> {
    pub provisioning: &'a Provisioning,
    pub dial: &'a Dial,
    pub tls: &'a Arc<ClientConfig>,
    pub clock: &'a DeviceClock,
    pub opts: &'a DeviceOptions,
    pub events: Option<&'a tokio::sync::mpsc::UnboundedSender<DeviceEvent>>,
}

impl Client<'_> {
    fn emit(&self, e: DeviceEvent) {
        if let Some(tx) = self.events {
            let _ = tx.send(e);
        }
    }

    fn has(&self, bug: Bug) -> bool {
        self.opts.bugs.contains(&bug)
    }

    /// Register, and the connection string of the hub assigned; or why not.
    pub async fn register(&self) -> Result<ConnectionString, String> {
        let p = self.provisioning;
        let mut io = self.dial.open(&p.host, p.port, self.tls).await?;
        let result = self.exchange(&mut io).await;
        // The SDKs end a registration, however it went, with a DISCONNECT.
        let _ = io.write_packet(&mq::Packet::Disconnect).await;
        result
    }

    async fn exchange(&self, io: &mut Io) -> Result<ConnectionString, String> {
        let p = self.provisioning;
        let mut connect = mq::Connect::new(p.registration_id.clone());
        connect.keep_alive = 60;
        connect.clean_session = true;
        let expiry = fakehub_protocol::clock::wall_add(self.clock.now(), TOKEN_TTL);
        let resource = dps::resource_uri(&p.id_scope, &p.registration_id);
        let token = sas::mint(&resource, &p.key, Some("registration"), expiry)
            .map_err(|e| format!("cannot sign the registration token: {e}"))?;
        let username = dps::username(
            &p.id_scope,
            &p.registration_id,
            "fakehub-sample-device%2F0.1",
        );
        connect.login = Some(mq::Login::new(username, token));
        self.write(io, mq::Packet::Connect(connect)).await?;
        match self.read(io).await? {
            mq::Packet::ConnAck(ack) if ack.code == mq::ConnectReturnCode::Success => {}
            mq::Packet::ConnAck(ack) => {
                return Err(format!("DPS refused the CONNECT: {:?}", ack.code))
            }
            other => return Err(format!("expected CONNACK from DPS, got {other:?}")),
        }
        let mut sub = mq::Subscribe::new(dps::RESPONSE_FILTER, QoS::AtLeastOnce);
        sub.pkid = 1;
        self.write(io, mq::Packet::Subscribe(sub)).await?;
        loop {
            match self.read(io).await? {
                mq::Packet::SubAck(ack) if ack.pkid == 1 => break,
                _ => continue,
            }
        }
        let timeout = if self.has(Bug::ShortDpsTimeout) {
            SHORT_TIMEOUT
        } else {
            self.opts.dps_timeout
        };
        let started: SystemTime = self.clock.now();
        let mut next_rid: u64 = 0;
        let mut pkid: u16 = 1;
        let mut request = Request::Register { rid: String::new() };
        // The instant a wait ended is held (shared clock) until the next request is out.
        let mut held: Option<Fired> = None;
        loop {
            next_rid += 1;
            pkid = pkid.checked_add(1).unwrap_or(2);
            let rid = next_rid.to_string();
            let (topic, body) = match &request {
                Request::Register { .. } => (
                    dps::register_topic(&rid),
                    serde_json::json!({ "registrationId": p.registration_id }).to_string(),
                ),
                Request::Poll { operation_id, .. } => {
                    (dps::poll_topic(&rid, operation_id), " ".to_owned())
                }
            };
            let mut publish = mq::Publish::new(topic, QoS::AtLeastOnce, body.into_bytes());
            publish.pkid = pkid;
            self.write(io, mq::Packet::Publish(publish)).await?;
            drop(held.take());
            let (answer, payload) = self.answer_to(io, &rid).await?;
            if answer.status >= 429 {
                held = self.wait(io, answer.status, answer.retry_after).await?;
                continue;
            }
            if answer.status >= 300 {
                return Err(format!(
                    "DPS answered {}: {}",
                    answer.status,
                    String::from_utf8_lossy(&payload)
                ));
            }
            let op: OperationStatus = serde_json::from_slice(&payload)
                .map_err(|e| format!("DPS's answer is not an operation status: {e}"))?;
            match op.status.as_str() {
                "assigned" => {
                    let state = op.registration_state.unwrap_or_default();
                    let (Some(hub), Some(device_id)) = (state.assigned_hub, state.device_id) else {
                        return Err(
                            "an assigned registration without assignedHub and deviceId".into()
                        );
                    };
                    return Ok(ConnectionString {
                        host_name: hub.clone(),
                        identity: fakehub_protocol::IdentityRef::device(device_id),
                        shared_access_key: p.key.clone(),
                        x509: false,
                        gateway_host: hub,
                        port: p.port,
                    });
                }
                "assigning" => {
                    let waited = self.clock.now().duration_since(started).unwrap_or_default();
                    if waited >= timeout {
                        return Err(format!(
                            "still assigning after {}s: giving up",
                            waited.as_secs()
                        ));
                    }
                    held = self.wait(io, answer.status, answer.retry_after).await?;
                    request = Request::Poll {
                        rid: String::new(),
                        operation_id: op.operation_id,
                    };
                }
                other => {
                    let why = op
                        .registration_state
                        .and_then(|s| s.error_message)
                        .unwrap_or_default();
                    return Err(format!("the registration ended {other}: {why}"));
                }
            }
        }
    }

    async fn write(&self, io: &mut Io, packet: mq::Packet) -> Result<(), String> {
        io.write_packet(&packet)
            .await
            .map_err(|e| format!("writing to DPS: {e}"))
    }

    /// The next packet, within the request timeout.
    async fn read(&self, io: &mut Io) -> Result<mq::Packet, String> {
        tokio::select! {
            biased;
            r = io.read_packet() => r.map_err(|e| format!("reading from DPS: {e}")),
            _ = self.clock.sleep(self.opts.connect_timeout) => Err("no answer from DPS in time".into()),
        }
    }

    /// DPS's answer to request `rid` (acknowledged when sent at QoS 1).
    async fn answer_to(&self, io: &mut Io, rid: &str) -> Result<(dps::Answer, Vec<u8>), String> {
        loop {
            let mq::Packet::Publish(p) = self.read(io).await? else {
                continue;
            };
            if p.qos == QoS::AtLeastOnce {
                self.write(io, mq::Packet::PubAck(mq::PubAck::new(p.pkid)))
                    .await?;
            }
            match dps::parse_answer(&p.topic) {
                Ok(a) if a.rid == rid => return Ok((a, p.payload.to_vec())),
                _ => continue,
            }
        }
    }

    /// Wait before the next request: `retry-after`, the default, or (the bug) a fixed second.
    async fn wait(
        &self,
        io: &mut Io,
        status: u16,
        retry_after: Option<u32>,
    ) -> Result<Option<Fired>, String> {
        let delay = if self.has(Bug::IgnoreRetryAfter) {
            FIXED_WAIT
        } else {
            retry_after.map_or(DEFAULT_WAIT, |s| Duration::from_secs(u64::from(s)))
        };
        self.emit(DeviceEvent::DpsWait {
            status,
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        });
        let mut timer = self.clock.timer_in(delay);
        // Keep the connection alive meanwhile (answer pings, drop strays).
        let ping = self.clock.sleep(Duration::from_secs(30));
        tokio::pin!(ping);
        loop {
            tokio::select! {
                biased;
                fired = timer.wait() => return Ok(fired),
                _ = &mut ping => {
                    self.write(io, mq::Packet::PingReq).await?;
                    ping.set(self.clock.sleep(Duration::from_secs(30)));
                }
                r = io.read_packet() => {
                    r.map_err(|e| format!("reading from DPS: {e}"))?;
                }
            }
        }
    }
}
