//! `throttle`: IoT Hub's connection-rate limit. New connections are admitted `per_second`, each
//! one a fixed spacing after the last (virtual elapsed time); the excess waits for its slot up to
//! the `shaping` backlog, and past it is closed unanswered with 429002.

use std::sync::Mutex;
use std::time::Duration;

use fakehub_protocol::ResultCode;
use serde::{Deserialize, Serialize};

use super::unit::{ConnectAttempt, ConnectVerdict, FaultUnit};
use super::Spec;

fn default_shaping() -> Duration {
    Duration::from_secs(10)
}

/// Admit at most this many new connections per second; excess waits up to `shaping`, then is
/// closed with 429002.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Throttle {
    pub per_second: u32,
    #[schemars(with = "String")]
    #[serde(default = "default_shaping", with = "humantime_serde")]
    pub shaping: Duration,
}

struct ThrottleUnit {
    per_second: u32,
    shaping: Duration,
    /// Virtual elapsed time at which the next connection may be admitted.
    next_free: Mutex<Option<Duration>>,
}

impl Spec for Throttle {
    fn build(&self) -> Box<dyn FaultUnit> {
        Box::new(ThrottleUnit {
            per_second: self.per_second.max(1),
            shaping: self.shaping,
            next_free: Mutex::new(None),
        })
    }
}

impl FaultUnit for ThrottleUnit {
    fn on_connect(&self, attempt: &ConnectAttempt<'_>) -> ConnectVerdict {
        let now = attempt.elapsed;
        let interval = Duration::from_secs(1) / self.per_second;
        let mut next_free = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
        let at = next_free.unwrap_or(now).max(now);
        let wait = at.saturating_sub(now);
        if wait > self.shaping {
            return ConnectVerdict::Hang {
                result: ResultCode::ThrottleBacklogLimitExceeded,
                reason: format!(
                    "throttled: over {} new connections/s beyond the {:?} backlog",
                    self.per_second, self.shaping
                ),
            };
        }
        *next_free = Some(at.saturating_add(interval));
        if wait.is_zero() {
            ConnectVerdict::Proceed
        } else {
            ConnectVerdict::Delay(wait)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_spaces_connections_then_refuses() {
        let unit = Throttle {
            per_second: 10,
            shaping: Duration::from_millis(250),
        }
        .build();
        let attempt = ConnectAttempt {
            client_id: "d1",
            elapsed: Duration::from_secs(100),
        };
        let verdicts: Vec<ConnectVerdict> = (0..5).map(|_| unit.on_connect(&attempt)).collect();
        assert_eq!(verdicts[0], ConnectVerdict::Proceed);
        assert_eq!(
            verdicts[1],
            ConnectVerdict::Delay(Duration::from_millis(100))
        );
        assert_eq!(
            verdicts[2],
            ConnectVerdict::Delay(Duration::from_millis(200))
        );
        assert!(
            matches!(
                verdicts[4],
                ConnectVerdict::Hang {
                    result: ResultCode::ThrottleBacklogLimitExceeded,
                    ..
                }
            ),
            "{verdicts:?}"
        );
    }
}
