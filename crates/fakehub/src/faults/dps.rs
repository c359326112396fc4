//! Faults of the Device Provisioning Service. They act on the provisioning connections of the hub
//! they are injected into (devices reach DPS through a hub's listener), and select devices by
//! registration id:
//!
//! * `dps_throttle`: requests answered 429 with `retry-after` — every one, or those over
//!   `per_minute` a minute (the service's own limits are 1,000 registrations a minute, 5 polls in
//!   10 s per device);
//! * `dps_error`: requests answered with a 4xx or 5xx error (`count` of them, or all);
//! * `dps_assigning`: registrations stay `assigning` until they are `hold` old;
//! * `dps_drop`: the connection is closed, unanswered, when a request comes (mid-registration);
//! * `dps_disabled`: the enrollment is disabled: registrations end `disabled`.
//!
//! A `retry-after` is sent as whole seconds (rounded up): the Python SDK cannot read anything else.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::unit::{DpsAttempt, DpsVerdict, FaultUnit};
use super::Spec;
use crate::events::DpsOp;
use crate::sessions::WireClose;

/// Whole seconds, rounded up, at least 1.
fn whole_seconds(d: Duration) -> u32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

fn default_retry_after() -> Duration {
    Duration::from_secs(5)
}

/// Take one of `count` (true while some are left; always true without a count).
fn take(left: &Option<AtomicU32>) -> bool {
    match left {
        None => true,
        Some(n) => n
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1))
            .is_ok(),
    }
}

/// Answer requests with 429 and `retry-after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DpsThrottle {
    /// The `retry-after` sent (whole seconds; default 5s).
    #[schemars(with = "String")]
    #[serde(default = "default_retry_after", with = "humantime_serde")]
    pub retry_after: Duration,
    /// Admit this many requests a minute (all selected devices together) and throttle the rest;
    /// left out, every request is throttled.
    #[serde(default)]
    pub per_minute: Option<u32>,
}

struct ThrottleUnit {
    retry_after: u32,
    per_minute: Option<u32>,
    /// When admitted requests came (virtual elapsed time), within the last minute.
    admitted: Mutex<VecDeque<Duration>>,
}

impl Spec for DpsThrottle {
    fn build(&self) -> Box<dyn FaultUnit> {
        Box::new(ThrottleUnit {
            retry_after: whole_seconds(self.retry_after),
            per_minute: self.per_minute,
            admitted: Mutex::new(VecDeque::new()),
        })
    }
}

impl FaultUnit for ThrottleUnit {
    fn on_dps(&self, attempt: &DpsAttempt<'_>) -> DpsVerdict {
        if let Some(limit) = self.per_minute {
            let mut admitted = self.admitted.lock().unwrap_or_else(|p| p.into_inner());
            let minute = Duration::from_secs(60);
            while admitted
                .front()
                .is_some_and(|t| attempt.elapsed.saturating_sub(*t) >= minute)
            {
                admitted.pop_front();
            }
            if admitted.len() < usize::try_from(limit).unwrap_or(usize::MAX) {
                admitted.push_back(attempt.elapsed);
                return DpsVerdict::Proceed;
            }
        }
        DpsVerdict::Refuse {
            status: 429,
            error_code: 429_001,
            message: "Throttled: the provisioning service is limiting requests".into(),
            retry_after: Some(self.retry_after),
        }
    }
}

fn default_error_status() -> u16 {
    503
}

/// Answer requests with an error status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DpsError {
    /// The status (400–599; default 503). 429 and 5xx are retried by the SDKs, other 4xx are final.
    #[serde(default = "default_error_status")]
    pub status: u16,
    /// A `retry-after` to send with it.
    #[schemars(with = "Option<String>")]
    #[serde(default, with = "humantime_serde")]
    pub retry_after: Option<Duration>,
    /// Only this kind of request (`register` or `poll`); left out, both.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub op: Option<DpsOp>,
    /// Only the first `count` requests; left out, all.
    #[serde(default)]
    pub count: Option<u32>,
}

struct ErrorUnit {
    status: u16,
    retry_after: Option<u32>,
    op: Option<DpsOp>,
    left: Option<AtomicU32>,
}

impl Spec for DpsError {
    fn build(&self) -> Box<dyn FaultUnit> {
        Box::new(ErrorUnit {
            status: self.status.clamp(400, 599),
            retry_after: self.retry_after.map(whole_seconds),
            op: self.op,
            left: self.count.map(AtomicU32::new),
        })
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not found",
        409 => "Conflict",
        412 => "Precondition failed",
        429 => "Throttled",
        500 => "Internal server error",
        502 => "Bad gateway",
        503 => "Service unavailable",
        504 => "Gateway timeout",
        s if s >= 500 => "Server error",
        _ => "Client error",
    }
}

impl FaultUnit for ErrorUnit {
    fn on_dps(&self, attempt: &DpsAttempt<'_>) -> DpsVerdict {
        if self.op.is_some_and(|op| op != attempt.op) || !take(&self.left) {
            return DpsVerdict::Proceed;
        }
        DpsVerdict::Refuse {
            status: self.status,
            error_code: u32::from(self.status) * 1000 + 1,
            message: format!("{} (injected)", reason(self.status)),
            retry_after: self.retry_after,
        }
    }
}

fn default_assigning_retry_after() -> Duration {
    Duration::from_secs(3)
}

/// Keep registrations `assigning` for a long time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DpsAssigning {
    /// How long after its register a registration stays `assigning`.
    #[schemars(with = "String")]
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
    /// The `retry-after` of the `assigning` answers (default 3s).
    #[schemars(with = "String")]
    #[serde(default = "default_assigning_retry_after", with = "humantime_serde")]
    pub retry_after: Duration,
}

impl Spec for DpsAssigning {
    fn build(&self) -> Box<dyn FaultUnit> {
        Box::new(self.clone())
    }
}

impl FaultUnit for DpsAssigning {
    fn on_dps(&self, attempt: &DpsAttempt<'_>) -> DpsVerdict {
        match attempt.op {
            DpsOp::Register => DpsVerdict::Proceed,
            DpsOp::Poll => DpsVerdict::Assigning {
                until: self.hold,
                retry_after: whole_seconds(self.retry_after),
            },
        }
    }
}

/// Close the connection when a request comes, without answering it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DpsDrop {
    /// Only this kind of request (`register` or `poll`); left out, both.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub op: Option<DpsOp>,
    /// Only the first `count` requests; left out, all.
    #[serde(default)]
    pub count: Option<u32>,
    /// Reset (true) instead of close.
    #[serde(default)]
    pub rst: bool,
}

struct DropUnit {
    op: Option<DpsOp>,
    left: Option<AtomicU32>,
    wire: WireClose,
}

impl Spec for DpsDrop {
    fn build(&self) -> Box<dyn FaultUnit> {
        Box::new(DropUnit {
            op: self.op,
            left: self.count.map(AtomicU32::new),
            wire: if self.rst {
                WireClose::Rst
            } else {
                WireClose::Fin
            },
        })
    }
}

impl FaultUnit for DropUnit {
    fn on_dps(&self, attempt: &DpsAttempt<'_>) -> DpsVerdict {
        if self.op.is_some_and(|op| op != attempt.op) || !take(&self.left) {
            return DpsVerdict::Proceed;
        }
        DpsVerdict::Drop { wire: self.wire }
    }
}

/// The enrollment of the selected registrations is disabled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DpsDisabled {}

impl Spec for DpsDisabled {
    fn build(&self) -> Box<dyn FaultUnit> {
        Box::new(self.clone())
    }
}

impl FaultUnit for DpsDisabled {
    fn on_dps(&self, attempt: &DpsAttempt<'_>) -> DpsVerdict {
        match attempt.op {
            DpsOp::Register => DpsVerdict::Proceed,
            DpsOp::Poll => DpsVerdict::Disabled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(op: DpsOp, secs: u64) -> DpsAttempt<'static> {
        DpsAttempt {
            registration_id: "d",
            op,
            elapsed: Duration::from_secs(secs),
        }
    }

    #[test]
    fn throttle_all_or_over_a_rate() {
        let all = DpsThrottle {
            retry_after: Duration::from_millis(2500),
            per_minute: None,
        }
        .build();
        assert!(matches!(
            all.on_dps(&at(DpsOp::Register, 1)),
            DpsVerdict::Refuse {
                status: 429,
                retry_after: Some(3),
                ..
            }
        ));
        let rate = DpsThrottle {
            retry_after: Duration::from_secs(5),
            per_minute: Some(2),
        }
        .build();
        assert_eq!(rate.on_dps(&at(DpsOp::Register, 0)), DpsVerdict::Proceed);
        assert_eq!(rate.on_dps(&at(DpsOp::Poll, 10)), DpsVerdict::Proceed);
        assert!(matches!(
            rate.on_dps(&at(DpsOp::Poll, 20)),
            DpsVerdict::Refuse { .. }
        ));
        assert_eq!(rate.on_dps(&at(DpsOp::Poll, 61)), DpsVerdict::Proceed);
    }

    #[test]
    fn errors_and_drops_count_down_and_pick_their_request() {
        let e = DpsError {
            status: 500,
            retry_after: None,
            op: Some(DpsOp::Poll),
            count: Some(1),
        }
        .build();
        assert_eq!(e.on_dps(&at(DpsOp::Register, 0)), DpsVerdict::Proceed);
        assert!(matches!(
            e.on_dps(&at(DpsOp::Poll, 0)),
            DpsVerdict::Refuse {
                status: 500,
                error_code: 500_001,
                ..
            }
        ));
        assert_eq!(e.on_dps(&at(DpsOp::Poll, 0)), DpsVerdict::Proceed);
        let d = DpsDrop {
            op: None,
            count: Some(2),
            rst: true,
        }
        .build();
        let drop = DpsVerdict::Drop {
            wire: WireClose::Rst,
        };
        assert_eq!(d.on_dps(&at(DpsOp::Register, 0)), drop);
        assert_eq!(d.on_dps(&at(DpsOp::Poll, 0)), drop);
        assert_eq!(d.on_dps(&at(DpsOp::Poll, 0)), DpsVerdict::Proceed);
    }
}
