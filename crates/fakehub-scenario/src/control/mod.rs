//! The control API of `fakehub serve`: the scenario's own vocabulary over HTTP, so a test suite in
//! any language drives the hub with the words of a scenario file. It is served next to the IoT Hub
//! service REST API, under `/fakehub/`, with the same shared access policy authentication
//! (`ServiceConnect`; the OpenAPI document needs none).
//!
//! * `POST /fakehub/timeline` — one timeline step as JSON, exactly as in a scenario
//!   ([`Step`]); answered when it has taken effect ([`service_steps`]). `advance` (and `wait`)
//!   jump the hub's virtual wall time ([`fakehub::VirtualClock::advance`]): every deadline inside
//!   fires in order (token expiries, fault ends), while devices that keep real time see a jump.
//!   `crash`, `restart` and `stop` are for scenario runs (serve runs no device processes).
//! * `DELETE /fakehub/faults/{id}` ends a lasting fault; `GET /fakehub/faults` lists active ones.
//! * `POST /fakehub/expect` — one expectation ([`Expectation`]), judged on the log so far, as if
//!   the run ended now ([`Log::of_running`]).
//! * `GET /fakehub/events?since=N[&wait=30s][&stream=true]` — the event log as JSON lines, from
//!   position N; `wait` long-polls for the first new one, `stream` keeps sending.
//! * `GET /fakehub/records` — the Connections records so far; `GET /fakehub/clock`.
//! * `GET /fakehub/openapi.json` — the OpenAPI document, generated from the same types
//!   ([`openapi`]).
//!
//! A request that does not fit gets 400 with the field and what was expected.
//!
//! Layering: this lives in the scenario crate because it speaks the scenario's types; the hub
//! crate's `service_api` knows nothing of it and only serves whatever routes it is given.

pub mod openapi;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use fakehub::service_api::auth::{Authorized, ServiceConnect};
use fakehub::service_api::body;
use fakehub::HubHandle;
use fakehub_assert::{Expectation, Log};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::scenario::Step;
use crate::service_steps::{self, Applied};

/// What the control routes share.
#[derive(Clone)]
pub struct Control {
    pub hub: Arc<HubHandle>,
    /// Cancelled when the API stops: streams and long polls end.
    pub stopping: CancellationToken,
}

impl FromRef<Control> for Arc<HubHandle> {
    fn from_ref(c: &Control) -> Arc<HubHandle> {
        c.hub.clone()
    }
}

/// The longest a long poll of `/fakehub/events` waits.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The control routes.
pub fn router(control: Control) -> Router {
    Router::new()
        .route("/fakehub/timeline", post(timeline))
        .route("/fakehub/faults", get(faults))
        .route("/fakehub/faults/{id}", delete(end_fault))
        .route("/fakehub/expect", post(expect))
        .route("/fakehub/events", get(events))
        .route("/fakehub/records", get(records))
        .route("/fakehub/clock", get(clock))
        .route("/fakehub/openapi.json", get(openapi_document))
        .with_state(control)
}

/// A request that did not fit: which field, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct BadRequest {
    /// The field, as a path (`fault.type`); empty for the request as a whole.
    pub field: String,
    pub message: String,
}

/// The body of a 400 or 404 answer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ErrorReply {
    pub error: BadRequest,
}

/// A refused request: its status and why.
pub struct Refusal {
    status: StatusCode,
    reply: ErrorReply,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, Json(self.reply)).into_response()
    }
}

fn bad(status: StatusCode, field: &str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reply: ErrorReply {
            error: BadRequest {
                field: field.to_owned(),
                message: message.into(),
            },
        },
    }
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Refusal> {
    body::parse(bytes).map_err(|e| bad(StatusCode::BAD_REQUEST, &e.field, e.message))
}

/// The hub's clock, as every answer of `/fakehub/timeline` and `/fakehub/clock` shows it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ClockReading {
    /// Virtual wall time, RFC 3339.
    pub now: String,
    /// Virtual elapsed time since the hub started, milliseconds.
    pub elapsed_ms: u64,
}

fn reading(hub: &HubHandle) -> ClockReading {
    ClockReading {
        now: fakehub::clock::rfc3339_millis(hub.clock().now()),
        elapsed_ms: u64::try_from(hub.clock().elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

/// The answer to a timeline step.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StepReply {
    /// The step, in words (`fault reset`, `advance 1h 5m`).
    pub step: String,
    /// What a service-side step did (absent for `advance` and `wait`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<Applied>,
    /// The clock after the step.
    pub clock: ClockReading,
}

/// Devices a step names must be registered.
fn check_devices(hub: &HubHandle, step: &Step) -> Result<(), Refusal> {
    let known = |id: &str| {
        hub.registry()
            .identity(&fakehub::IdentityRef::from_client_id(id))
            .is_some()
    };
    let (field, id) = match step {
        Step::C2d(c) => ("c2d.device", c.device.as_str()),
        Step::Desired(d) => ("desired.device", d.device.as_str()),
        Step::Method(m) => ("method.device", m.device.as_str()),
        Step::Fault(f) => {
            if let fakehub::faults::Selector::Ids(ids) = &f.fault.devices {
                if let Some(id) = ids.iter().find(|id| !known(id)) {
                    return Err(bad(
                        StatusCode::BAD_REQUEST,
                        "fault.devices",
                        format!("no device `{id}` in this hub's registry"),
                    ));
                }
            }
            return Ok(());
        }
        Step::Crash(_) | Step::Restart(_) | Step::Stop(_) => return Err(bad(
            StatusCode::BAD_REQUEST,
            "",
            "crash, restart and stop act on device processes of a scenario run; serve runs none",
        )),
        Step::Advance(_) | Step::Wait(_) => return Ok(()),
    };
    if known(id) {
        Ok(())
    } else {
        Err(bad(
            StatusCode::BAD_REQUEST,
            field,
            format!("no device `{id}` in this hub's registry"),
        ))
    }
}

async fn timeline(
    _: Authorized<ServiceConnect>,
    State(c): State<Control>,
    bytes: Bytes,
) -> Result<Json<StepReply>, Refusal> {
    let step: Step = parse(&bytes)?;
    if let Step::Desired(d) = &step {
        if !d.patch.is_object() {
            return Err(bad(
                StatusCode::BAD_REQUEST,
                "desired.patch",
                "a JSON object",
            ));
        }
    }
    check_devices(&c.hub, &step)?;
    let applied = match &step {
        Step::Advance(d) | Step::Wait(d) => {
            c.hub.clock().advance(*d).await;
            c.hub.events().emit(
                &fakehub::events::Subject::default(),
                fakehub::EventKind::ClockAdvanced {
                    by_ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                },
            );
            None
        }
        other => service_steps::apply(std::slice::from_ref(&c.hub), other).await,
    };
    Ok(Json(StepReply {
        step: step.describe(),
        applied,
        clock: reading(&c.hub),
    }))
}

/// An active fault.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ActiveFault {
    pub id: u64,
    pub fault: String,
}

async fn faults(_: Authorized<ServiceConnect>, State(c): State<Control>) -> Json<Vec<ActiveFault>> {
    Json(
        c.hub
            .active_faults()
            .into_iter()
            .map(|(id, fault)| ActiveFault { id, fault })
            .collect(),
    )
}

async fn end_fault(
    _: Authorized<ServiceConnect>,
    State(c): State<Control>,
    Path(id): Path<String>,
) -> Result<StatusCode, Refusal> {
    let Ok(id) = id.parse::<u64>() else {
        return Err(bad(
            StatusCode::BAD_REQUEST,
            "id",
            "a fault id (a number, as `fault.id` of the step's answer)",
        ));
    };
    if c.hub.end_fault(id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(bad(
            StatusCode::NOT_FOUND,
            "id",
            format!("no active fault {id}"),
        ))
    }
}

/// One rule's verdict for one device (or the fleet).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct VerdictReply {
    pub rule: String,
    pub device: Option<String>,
    pub passed: bool,
    /// False when the log could not tell (neither a pass nor a fail).
    pub judged: bool,
    /// `PASS`, `FAIL` or `CANNOT JUDGE`.
    pub mark: String,
    pub summary: String,
    /// On failure: the events around the violation.
    pub excerpt: Vec<String>,
}

impl From<&fakehub_assert::Verdict> for VerdictReply {
    fn from(v: &fakehub_assert::Verdict) -> Self {
        VerdictReply {
            rule: v.rule.clone(),
            device: v.device.clone(),
            passed: v.passed,
            judged: v.judged,
            mark: v.mark().to_owned(),
            summary: v.summary.clone(),
            excerpt: v.excerpt.clone(),
        }
    }
}

/// The answer to an expectation: all its verdicts together (an expectation without `device` has
/// one per registered device), and each.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ExpectReply {
    /// Every verdict passed.
    pub passed: bool,
    /// Every verdict could be judged.
    pub judged: bool,
    /// One line per verdict.
    pub summary: String,
    /// The excerpts of the verdicts that did not pass.
    pub excerpt: Vec<String>,
    pub verdicts: Vec<VerdictReply>,
}

async fn expect(
    _: Authorized<ServiceConnect>,
    State(c): State<Control>,
    bytes: Bytes,
) -> Result<Json<ExpectReply>, Refusal> {
    let expectation: Expectation = parse(&bytes)?;
    if let Some(d) = expectation.device() {
        if c.hub.registry().device(d).is_none() {
            return Err(bad(
                StatusCode::BAD_REQUEST,
                &format!("{}.device", expectation.name()),
                format!("no device `{d}` in this hub's registry"),
            ));
        }
    }
    let log = Log::of_running(&c.hub);
    let verdicts = expectation.evaluate_for(&log, &c.hub.registry().device_ids());
    let summary: Vec<String> = verdicts
        .iter()
        .map(|v| {
            let who = v.device.as_deref().unwrap_or("fleet");
            format!("{} {who}: {}", v.mark(), v.summary)
        })
        .collect();
    let reply = ExpectReply {
        passed: verdicts.iter().all(|v| v.passed),
        judged: verdicts.iter().all(|v| v.judged),
        summary: summary.join("\n"),
        excerpt: verdicts
            .iter()
            .filter(|v| !v.passed)
            .flat_map(|v| v.excerpt.clone())
            .collect(),
        verdicts: verdicts.iter().map(VerdictReply::from).collect(),
    };
    Ok(Json(reply))
}

/// The query of `/fakehub/events`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
pub struct EventsQuery {
    /// The first event to send (its `seq`); default 0.
    #[serde(default)]
    pub since: u64,
    /// Long poll: when nothing from `since` on exists yet, wait this long (real time, at most
    /// 60s) for the first event.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub wait: Option<Duration>,
    /// Keep the answer open and send every event as it happens.
    #[serde(default)]
    pub stream: bool,
}

fn ndjson(body: Body, next: Option<u64>) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    if let Some(next) = next {
        if let Ok(v) = HeaderValue::from_str(&next.to_string()) {
            r.headers_mut().insert("x-fakehub-next", v);
        }
    }
    r
}

fn line(e: &fakehub::Event) -> Bytes {
    let mut text = serde_json::to_string(e).unwrap_or_default();
    text.push('\n');
    Bytes::from(text)
}

async fn events(
    _: Authorized<ServiceConnect>,
    State(c): State<Control>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return bad(StatusCode::BAD_REQUEST, "query", e.body_text()).into_response(),
    };
    if q.stream {
        let stream = c.hub.event_stream_from(q.since);
        let stopping = c.stopping.clone();
        let body = futures_util::stream::unfold((stream, stopping), |(mut s, stop)| async move {
            tokio::select! {
                biased;
                _ = stop.cancelled() => None,
                e = s.next() => Some((Ok::<_, Infallible>(line(&e)), (s, stop))),
            }
        });
        return ndjson(Body::from_stream(body), None);
    }
    let mut found = c.hub.events_since(q.since);
    if found.is_empty() {
        if let Some(wait) = q.wait.map(|w| w.min(MAX_WAIT)) {
            let mut stream = c.hub.event_stream_from(q.since);
            tokio::select! {
                biased;
                _ = c.stopping.cancelled() => {}
                _ = tokio::time::timeout(wait, stream.next()) => {}
            }
            found = c.hub.events_since(q.since);
        }
    }
    let next = found.last().map_or(q.since, |e| e.seq.saturating_add(1));
    let mut text = Vec::new();
    for e in &found {
        text.extend_from_slice(&line(e));
    }
    ndjson(Body::from(text), Some(next))
}

async fn records(
    _: Authorized<ServiceConnect>,
    State(c): State<Control>,
) -> Json<Vec<fakehub::ConnectionRecord>> {
    Json(c.hub.records())
}

async fn clock(_: Authorized<ServiceConnect>, State(c): State<Control>) -> Json<ClockReading> {
    Json(reading(&c.hub))
}

async fn openapi_document() -> Json<serde_json::Value> {
    Json(openapi::document())
}
