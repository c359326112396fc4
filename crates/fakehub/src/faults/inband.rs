//! IoT Hub's in-band fault injection, as the official SDKs' own end-to-end tests use it: a
//! telemetry message whose properties say `AzIoTHub_FaultOperationType` = `KillTcp`,
//! `ShutDownMqtt`, `InvokeThrottling`, `InvokeMaxMessageQuota` or `InvokeAuthError` (with
//! `…DelayInSecs` and `…DurationInSecs`) gets no PUBACK; after the delay the connection is reset
//! (KillTcp) or closed, and for the throttling, quota and auth faults the device's CONNECTs are
//! refused for the duration. A resent trigger (the same message id, after the reconnect) is an
//! ordinary message: each trigger acts once.
//!
//! The provisioning service has the same dialect, carried in a register request's `payload`
//! (`{"registrationId": …, "payload": {"AzIoTHub_FaultOperationType": "InvokeThrottling",
//! "AzIoTHub_FaultOperationDurationInSecs": 10}}`, what `provisioning_payload` sets in the SDKs):
//! `InvokeThrottling` (429 with `retry-after` = the duration), `InvokeAuthError` (401, final for the
//! SDKs), `KillTcp` / `ShutDownMqtt` (the provisioning connection reset / closed, unanswered), for
//! the registration, from that request on, for `…DurationInSecs` (at least a second; a delay is not
//! supported there). The official suites have no DPS faults: this is fakehub's own, named after
//! IoT Hub's.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fakehub_protocol::properties::PropertyBag;
use fakehub_protocol::ResultCode;

use super::unit::{ConnectAttempt, ConnectVerdict, FaultUnit};
use super::{Context, Selector, Started};
use crate::events::{CloseCause, Stamp};
use crate::sessions::CloseRequest;
use crate::WireClose;

/// How many trigger ids are remembered per identity (older ones are forgotten: a trigger resent
/// after 64 newer ones would act again, which no SDK does).
const REMEMBERED_PER_IDENTITY: usize = 64;
/// The longest delay or duration a trigger may ask for; longer ones are cut to it.
const LONGEST: Duration = Duration::from_secs(24 * 3600);

const OPERATION: &str = "AzIoTHub_FaultOperationType";
const DELAY: &str = "AzIoTHub_FaultOperationDelayInSecs";
const DURATION: &str = "AzIoTHub_FaultOperationDurationInSecs";

/// The trigger ids already acted on, per identity (bounded).
#[derive(Default)]
pub(crate) struct Triggers {
    seen: Mutex<BTreeMap<String, VecDeque<String>>>,
}

impl Triggers {
    /// Remember a trigger; false if it was seen already.
    fn fresh(&self, client_id: &str, key: String) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let ids = seen.entry(client_id.to_owned()).or_default();
        if ids.contains(&key) {
            return false;
        }
        if ids.len() >= REMEMBERED_PER_IDENTITY {
            ids.pop_front();
        }
        ids.push_back(key);
        true
    }
}

/// A number of seconds from a property: finite, not negative, cut to [`LONGEST`]; absent or not a
/// number is zero.
fn seconds(bag: &PropertyBag, name: &str) -> Duration {
    seconds_of(bag.application.get(name).map(String::as_str))
}

/// A number of seconds from a text: finite, not negative, cut to [`LONGEST`]; absent or not a
/// number is zero.
fn seconds_of(text: Option<&str>) -> Duration {
    text.and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| {
            Duration::try_from_secs_f64(v)
                .unwrap_or(LONGEST)
                .min(LONGEST)
        })
        .unwrap_or_default()
}

/// What one operation does: how the connection ends, the code logged, and the CONNACK refusal
/// (return code and result) while the fault lasts.
type Operation = (WireClose, Option<ResultCode>, Option<(u8, ResultCode)>);

fn operation(op: &str) -> Option<Operation> {
    use ResultCode::{IoTHubQuotaExceeded, IoTHubUnauthorized, ThrottlingException};
    Some(match op {
        "KillTcp" => (WireClose::Rst, None, None),
        "ShutDownMqtt" => (WireClose::Fin, None, None),
        "InvokeThrottling" => (
            WireClose::Fin,
            Some(ThrottlingException),
            Some((3, ThrottlingException)),
        ),
        "InvokeMaxMessageQuota" => (
            WireClose::Fin,
            Some(IoTHubQuotaExceeded),
            Some((3, IoTHubQuotaExceeded)),
        ),
        "InvokeAuthError" => (
            WireClose::Fin,
            Some(IoTHubUnauthorized),
            Some((5, IoTHubUnauthorized)),
        ),
        _ => return None,
    })
}

/// Whether a message with these properties names an in-band fault (which [`trigger`] then looks
/// at): most telemetry does not.
pub(crate) fn names_a_fault(bag: &PropertyBag) -> bool {
    bag.application.contains_key(OPERATION)
}

/// Look at a device's telemetry for an in-band trigger. True when it is a fresh trigger: the fault
/// is started, and the message must not be acknowledged or forwarded. The faults' context is made
/// only then (`ctx`): most telemetry carries no trigger.
pub(crate) fn trigger(
    ctx: impl FnOnce() -> Context,
    triggers: &Triggers,
    client_id: &str,
    bag: &PropertyBag,
    fallback_key: impl FnOnce() -> String,
) -> bool {
    let Some(op) = bag.application.get(OPERATION) else {
        return false;
    };
    let Some((wire, close_result, refuse)) = operation(op) else {
        tracing::info!(op = %op, "unknown AzIoTHub_FaultOperationType ignored");
        return false;
    };
    let key = bag
        .message_id()
        .map(str::to_owned)
        .unwrap_or_else(fallback_key);
    if !triggers.fresh(client_id, key) {
        return false;
    }
    let delay = seconds(bag, DELAY);
    let duration = seconds(bag, DURATION);
    let unit = Arc::new(InbandUnit {
        op: op.clone(),
        client_id: client_id.to_owned(),
        wire,
        close_result,
        refuse,
        delay,
        duration,
        refusing_since: Arc::new(Mutex::new(None)),
    });
    let detail = serde_json::json!({
        "device": client_id,
        "delay_secs": delay.as_secs_f64(),
        "duration_secs": duration.as_secs_f64(),
    });
    super::start(
        &ctx(),
        &format!("inband:{op}"),
        unit,
        &Selector::Ids(vec![client_id.to_owned()]),
        Some(detail),
        None,
    );
    true
}

/// Look at a register request's `payload` for an in-band trigger of the provisioning service (see
/// the module documentation). True when it started a fault, which then answers this request too.
pub(crate) fn trigger_dps(
    ctx: &Context,
    triggers: &Triggers,
    registration_id: &str,
    payload: &serde_json::Value,
) -> bool {
    let Some(fields) = payload.as_object() else {
        return false;
    };
    let Some(op) = fields.get(OPERATION).and_then(serde_json::Value::as_str) else {
        return false;
    };
    let text = |name: &str| match fields.get(name) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let duration = seconds_of(text(DURATION).as_deref()).max(Duration::from_secs(1));
    let kind: super::FaultKind = match op {
        "InvokeThrottling" => super::DpsThrottle {
            retry_after: duration,
            per_minute: None,
        }
        .into(),
        "InvokeAuthError" => super::DpsError {
            status: 401,
            retry_after: None,
            op: None,
            count: None,
        }
        .into(),
        "KillTcp" | "ShutDownMqtt" => super::DpsDrop {
            op: None,
            count: None,
            rst: op == "KillTcp",
        }
        .into(),
        _ => {
            tracing::info!(op = %op, "unknown AzIoTHub_FaultOperationType for DPS ignored");
            return false;
        }
    };
    // A register the device repeats with the same payload is the same trigger.
    if !triggers.fresh(registration_id, format!("dps:{payload}")) {
        return false;
    }
    let detail = serde_json::json!({
        "registration": registration_id,
        "duration_secs": duration.as_secs_f64(),
    });
    super::start(
        ctx,
        &format!("inband:dps:{op}"),
        Arc::from(kind.build()),
        &Selector::Ids(vec![registration_id.to_owned()]),
        Some(detail),
        Some(duration),
    );
    true
}

struct InbandUnit {
    op: String,
    client_id: String,
    wire: WireClose,
    close_result: Option<ResultCode>,
    refuse: Option<(u8, ResultCode)>,
    delay: Duration,
    duration: Duration,
    /// When the fault acted (CONNACKs are refused from then on, for the refusing operations).
    refusing_since: Arc<Mutex<Option<SystemTime>>>,
}

impl FaultUnit for InbandUnit {
    fn started(&self, ctx: &Context, fault: &Started<'_>, _matches: &dyn Fn(&str) -> bool) {
        let ctx = ctx.clone();
        let id = fault.id;
        let mut act = ctx.clock.timer_in(self.delay);
        let request = CloseRequest {
            wire: self.wire,
            cause: CloseCause::Fault,
            detail: format!("in-band fault {}", self.op),
            result: self.close_result,
        };
        let client = self.client_id.clone();
        let duration = self.duration;
        let refusing_since = self.refusing_since.clone();
        let tasks = ctx.tasks.clone();
        tasks.spawn(async move {
            let fired = tokio::select! {
                biased;
                fired = act.wait() => fired,
                _ = ctx.shutdown.cancelled() => return,
            };
            *refusing_since.lock().unwrap_or_else(|p| p.into_inner()) = Some(fired.at);
            ctx.sessions.close(&client, request);
            let mut end = ctx.clock.timer(crate::clock::wall_add(fired.at, duration));
            drop(fired);
            tokio::select! {
                biased;
                fired = end.wait() => {
                    super::end(&ctx, id, Stamp::Wall(fired.at));
                    drop(fired);
                }
                _ = ctx.shutdown.cancelled() => {}
            }
        });
    }

    fn on_connect(&self, _attempt: &ConnectAttempt<'_>) -> ConnectVerdict {
        let since = *self
            .refusing_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match (self.refuse, since) {
            (Some((code, result)), Some(_)) => ConnectVerdict::Refuse {
                code,
                result,
                reason: format!("in-band fault {}", self.op),
            },
            _ => ConnectVerdict::Proceed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bag(delay: &str) -> PropertyBag {
        PropertyBag::parse(&format!("{DELAY}={delay}"))
    }

    #[test]
    fn delays_are_finite_and_cut_to_a_day() {
        for (text, secs) in [
            ("1e30", LONGEST.as_secs_f64()),
            ("1e19", LONGEST.as_secs_f64()),
            ("18446744073709551615", LONGEST.as_secs_f64()),
            ("inf", 0.0),
            ("NaN", 0.0),
            ("-1", 0.0),
            ("abc", 0.0),
            ("2.5", 2.5),
        ] {
            assert_eq!(seconds(&bag(text), DELAY).as_secs_f64(), secs, "{text}");
        }
    }

    #[test]
    fn remembered_trigger_ids_are_bounded_per_identity() {
        let t = Triggers::default();
        for i in 0..10_000 {
            assert!(t.fresh("dev", format!("m{i}")));
        }
        let seen = t.seen.lock().unwrap();
        assert_eq!(seen["dev"].len(), REMEMBERED_PER_IDENTITY);
        drop(seen);
        // The newest are still remembered (a resend acts once); the oldest are forgotten.
        assert!(!t.fresh("dev", "m9999".into()));
        assert!(t.fresh("dev", "m0".into()));
    }
}
