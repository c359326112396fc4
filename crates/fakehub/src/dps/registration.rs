//! The registration state machine: operations and registration records.
//!
//! A register request starts an operation (`assigning`, answered 202 with `retry-after`). DPS
//! assigns it once it is `assign_after` old: the first poll from then on completes it — the hub is
//! allocated, the device created in that hub's registry, the registration record written — and is
//! answered 200 `assigned` (or `disabled` for a disabled enrollment, or `failed` when no hub can
//! take it). Later polls of a finished operation get the same answer. A new register of the same
//! registration replaces its operation. Polls are limited as the service limits them (5 per 10 s
//! per device: the sixth is 429 with `retry-after`).
//!
//! Every generated id (operation ids, etags, tracking ids) is drawn from the run's seed, so a
//! simulated run repeats exactly.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use fakehub_protocol::dps::{ErrorBody, OperationStatus, RegistrationState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::enrollment::{Attested, EnrollmentRef};

/// How many polls a registration may make in [`POLL_WINDOW`] (the service's documented limit).
pub const POLLS_PER_WINDOW: usize = 5;
/// The polling limit's window.
pub const POLL_WINDOW: Duration = Duration::from_secs(10);
/// How many finished operations are kept for late polls (the oldest go first).
const KEPT_OPERATIONS: usize = 10_000;

/// DPS's record of a registration (what the service API's "device registration state" shows).
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub registration_id: String,
    /// `assigned`, `failed` or `disabled`.
    pub status: String,
    pub enrollment: EnrollmentRef,
    /// The assigned hub's name (its host name).
    pub hub: Option<String>,
    /// The host name the device was told to connect to.
    pub assigned_hub: Option<String>,
    pub device_id: Option<String>,
    pub substatus: Option<String>,
    pub error_code: Option<u32>,
    pub error_message: Option<String>,
    pub created: SystemTime,
    pub updated: SystemTime,
    pub etag: String,
}

/// A completed assignment.
#[derive(Debug, Clone)]
pub struct Assigned {
    pub hub: String,
    pub assigned_hub: String,
    pub device_id: String,
    pub substatus: String,
}

/// What DPS answers a request with: the status and `retry-after` of the answer topic, the body,
/// and what the body says (for the event).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<u32>,
    pub body: serde_json::Value,
    pub operation_id: Option<String>,
    pub registration: Option<String>,
    pub hub: Option<String>,
    pub assigned_hub: Option<String>,
    pub device_id: Option<String>,
    pub substatus: Option<String>,
    pub error_code: Option<u32>,
    pub message: Option<String>,
}

impl Answer {
    fn of_status(status: u16, retry_after: Option<u32>, op: &OperationStatus) -> Answer {
        let state = op.registration_state.as_ref();
        Answer {
            status,
            retry_after,
            body: serde_json::to_value(op).unwrap_or_default(),
            operation_id: Some(op.operation_id.clone()),
            registration: Some(op.status.clone()),
            hub: None,
            assigned_hub: state.and_then(|s| s.assigned_hub.clone()),
            device_id: state.and_then(|s| s.device_id.clone()),
            substatus: state.and_then(|s| s.substatus.clone()),
            error_code: state.and_then(|s| s.error_code),
            message: state.and_then(|s| s.error_message.clone()),
        }
    }
}

struct Operation {
    registration_id: String,
    attested: Attested,
    started: Duration,
    ready_at: Duration,
    /// The final answer, once the operation finished.
    done: Option<(OperationStatus, Option<String>)>,
}

/// Operations, registration records and the polling limit of one service.
pub struct Book {
    rng: StdRng,
    operations: BTreeMap<String, Operation>,
    /// Operation ids in the order they started (to forget the oldest).
    order: VecDeque<String>,
    registrations: BTreeMap<String, Registration>,
    polls: BTreeMap<String, VecDeque<Duration>>,
}

/// A time as DPS writes it: `2024-01-01T00:00:00.0000000Z` (seven fractional digits).
pub fn dps_time(t: SystemTime) -> String {
    let full = humantime::format_rfc3339_nanos(t).to_string();
    match full.split_once('.') {
        Some((secs, frac)) => {
            let digits: String = frac.chars().filter(char::is_ascii_digit).take(7).collect();
            format!("{secs}.{digits:0<7}Z")
        }
        None => full,
    }
}

impl Book {
    pub fn new(seed: u64) -> Book {
        Book {
            rng: StdRng::seed_from_u64(seed ^ 0xd95_d95),
            operations: BTreeMap::new(),
            order: VecDeque::new(),
            registrations: BTreeMap::new(),
            polls: BTreeMap::new(),
        }
    }

    fn uuid(&mut self) -> String {
        let mut b: [u8; 16] = self.rng.random();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    /// An error answer in the service's shape.
    pub fn error(
        &mut self,
        now: SystemTime,
        (status, error_code): (u16, u32),
        message: &str,
        retry_after: Option<u32>,
    ) -> Answer {
        let body = ErrorBody {
            error_code,
            tracking_id: self.uuid(),
            message: message.to_owned(),
            timestamp_utc: dps_time(now),
        };
        Answer {
            status,
            retry_after,
            body: serde_json::to_value(body).unwrap_or_default(),
            operation_id: None,
            registration: None,
            hub: None,
            assigned_hub: None,
            device_id: None,
            substatus: None,
            error_code: Some(error_code),
            message: Some(message.to_owned()),
        }
    }

    /// Start a registration operation; answered 202 `assigning`.
    pub fn register(
        &mut self,
        attested: &Attested,
        elapsed: Duration,
        assign_after: Duration,
        retry_after: u32,
    ) -> Answer {
        let id = format!("4.{:016x}.{}", self.rng.random::<u64>(), self.uuid());
        let registration_id = attested.registration_id.clone();
        // A new register replaces the registration's unfinished operation.
        self.operations
            .retain(|_, o| o.registration_id != registration_id || o.done.is_some());
        self.operations.insert(
            id.clone(),
            Operation {
                registration_id: registration_id.clone(),
                attested: attested.clone(),
                started: elapsed,
                ready_at: elapsed.saturating_add(assign_after),
                done: None,
            },
        );
        self.order.push_back(id.clone());
        while self.order.len() > KEPT_OPERATIONS {
            if let Some(old) = self.order.pop_front() {
                self.operations.remove(&old);
            }
        }
        Answer::of_status(202, Some(retry_after), &assigning(&id, &registration_id))
    }

    /// Count a poll against the registration's limit: the `retry-after` (whole seconds, at least
    /// 1) when it is over.
    pub fn over_poll_limit(&mut self, registration_id: &str, elapsed: Duration) -> Option<u32> {
        let polls = self.polls.entry(registration_id.to_owned()).or_default();
        while polls
            .front()
            .is_some_and(|t| elapsed.saturating_sub(*t) >= POLL_WINDOW)
        {
            polls.pop_front();
        }
        if polls.len() >= POLLS_PER_WINDOW {
            let oldest = polls.front().copied().unwrap_or(elapsed);
            let wait = POLL_WINDOW.saturating_sub(elapsed.saturating_sub(oldest));
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Some(u32::try_from(secs.max(1)).unwrap_or(u32::MAX));
        }
        polls.push_back(elapsed);
        None
    }

    /// Poll an operation. `hold_until`: a fault keeps it `assigning` until it is that old;
    /// `disabled`: a fault says the enrollment is disabled; `assign` allocates a hub and creates
    /// the device there (given the registration's previous record), or says why it cannot.
    #[allow(clippy::too_many_arguments)]
    pub fn poll(
        &mut self,
        registration_id: &str,
        operation_id: &str,
        (now, elapsed): (SystemTime, Duration),
        retry_after: u32,
        hold_until: Option<Duration>,
        disabled: bool,
        assign: impl FnOnce(&Attested, Option<&Registration>) -> Result<Assigned, String>,
    ) -> Answer {
        let Some(op) = self
            .operations
            .get(operation_id)
            .filter(|o| o.registration_id == registration_id)
        else {
            let message = format!("operation '{operation_id}' not found for '{registration_id}'");
            return self.error(now, (404, 404_201), &message, None);
        };
        if let Some((status, hub)) = &op.done {
            let mut answer = Answer::of_status(200, None, status);
            answer.hub = hub.clone();
            return answer;
        }
        let held = hold_until.is_some_and(|until| elapsed.saturating_sub(op.started) < until);
        if elapsed < op.ready_at || held {
            let status = assigning(operation_id, registration_id);
            return Answer::of_status(202, Some(retry_after), &status);
        }
        let attested = op.attested.clone();
        let previous = self.registrations.get(registration_id).cloned();
        let etag = B64.encode(format!("\"{}\"", self.uuid()));
        let created = previous.as_ref().map_or(now, |p| p.created);
        let mut record = Registration {
            registration_id: registration_id.to_owned(),
            status: String::new(),
            enrollment: attested.enrollment.clone(),
            hub: None,
            assigned_hub: None,
            device_id: None,
            substatus: None,
            error_code: None,
            error_message: None,
            created,
            updated: now,
            etag,
        };
        if disabled || !attested.enabled {
            record.status = "disabled".into();
            record.error_message = Some(format!("{} is disabled", attested.enrollment.describe()));
        } else {
            match assign(&attested, previous.as_ref()) {
                Ok(a) => {
                    record.status = "assigned".into();
                    record.hub = Some(a.hub);
                    record.assigned_hub = Some(a.assigned_hub);
                    record.device_id = Some(a.device_id);
                    record.substatus = Some(a.substatus);
                }
                Err(why) => {
                    record.status = "failed".into();
                    record.error_code = Some(500_000);
                    record.error_message = Some(why);
                }
            }
        }
        let status = finished(operation_id, &record);
        let hub = record.hub.clone();
        self.registrations
            .insert(registration_id.to_owned(), record);
        if let Some(op) = self.operations.get_mut(operation_id) {
            op.done = Some((status.clone(), hub.clone()));
        }
        let mut answer = Answer::of_status(200, None, &status);
        answer.hub = hub;
        answer
    }

    /// The registration record of a registration id.
    pub fn registration(&self, registration_id: &str) -> Option<Registration> {
        self.registrations.get(registration_id).cloned()
    }

    /// Every registration id with a record.
    pub fn registration_ids(&self) -> Vec<String> {
        self.registrations.keys().cloned().collect()
    }
}

fn assigning(operation_id: &str, registration_id: &str) -> OperationStatus {
    OperationStatus {
        operation_id: operation_id.to_owned(),
        status: "assigning".into(),
        registration_state: Some(RegistrationState {
            registration_id: registration_id.to_owned(),
            status: "assigning".into(),
            ..Default::default()
        }),
    }
}

fn finished(operation_id: &str, r: &Registration) -> OperationStatus {
    let assigned = r.status == "assigned";
    OperationStatus {
        operation_id: operation_id.to_owned(),
        status: r.status.clone(),
        registration_state: Some(RegistrationState {
            registration_id: r.registration_id.clone(),
            created_date_time_utc: Some(dps_time(r.created)),
            assigned_hub: r.assigned_hub.clone(),
            device_id: r.device_id.clone(),
            status: r.status.clone(),
            substatus: r.substatus.clone(),
            error_code: r.error_code,
            error_message: if assigned {
                None
            } else {
                r.error_message.clone()
            },
            last_updated_date_time_utc: Some(dps_time(r.updated)),
            etag: Some(r.etag.clone()),
            payload: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attested(enabled: bool) -> Attested {
        Attested {
            registration_id: "d".into(),
            enrollment: EnrollmentRef::Individual("d".into()),
            keys: None,
            enabled,
        }
    }

    fn to(hub: &str) -> Result<Assigned, String> {
        Ok(Assigned {
            hub: hub.into(),
            assigned_hub: format!("{hub}.example"),
            device_id: "d".into(),
            substatus: "initialAssignment".into(),
        })
    }

    const T0: Duration = Duration::from_secs(100);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn assigning_then_assigned_once_ready_and_the_same_answer_after() {
        let mut book = Book::new(7);
        let a = book.register(&attested(true), T0, Duration::from_secs(2), 3);
        assert_eq!((a.status, a.retry_after), (202, Some(3)));
        assert_eq!(a.body["status"], "assigning");
        let op = a.operation_id.unwrap();
        assert!(op.starts_with("4."), "{op}");
        let early = book.poll(
            "d",
            &op,
            (now(), T0 + Duration::from_secs(1)),
            3,
            None,
            false,
            |_, _| to("never"),
        );
        assert_eq!(
            (early.status, early.registration.as_deref()),
            (202, Some("assigning"))
        );
        let done = book.poll(
            "d",
            &op,
            (now(), T0 + Duration::from_secs(2)),
            3,
            None,
            false,
            |_, prev| {
                assert!(prev.is_none());
                to("hub-a")
            },
        );
        assert_eq!(done.status, 200);
        let state = &done.body["registrationState"];
        assert_eq!(state["assignedHub"], "hub-a.example");
        assert_eq!(state["substatus"], "initialAssignment");
        assert_eq!(state["deviceId"], "d");
        assert!(state["createdDateTimeUtc"].as_str().unwrap().ends_with('Z'));
        assert_eq!(done.hub.as_deref(), Some("hub-a"));
        let again = book.poll(
            "d",
            &op,
            (now(), T0 + Duration::from_secs(9)),
            3,
            None,
            false,
            |_, _| to("other"),
        );
        assert_eq!(again.body, done.body);
        assert_eq!(
            book.registration("d").unwrap().hub.as_deref(),
            Some("hub-a")
        );
        // Another registration's poll of this operation is not found.
        let other = book.poll("e", &op, (now(), T0), 3, None, false, |_, _| to("x"));
        assert_eq!((other.status, other.error_code), (404, Some(404_201)));
    }

    #[test]
    fn held_disabled_and_failed_registrations() {
        let mut book = Book::new(1);
        let op = book
            .register(&attested(true), T0, Duration::ZERO, 2)
            .operation_id
            .unwrap();
        let held = book.poll(
            "d",
            &op,
            (now(), T0 + Duration::from_secs(30)),
            2,
            Some(Duration::from_secs(60)),
            false,
            |_, _| to("h"),
        );
        assert_eq!(held.status, 202);
        let off = book.poll(
            "d",
            &op,
            (now(), T0 + Duration::from_secs(61)),
            2,
            Some(Duration::from_secs(60)),
            true,
            |_, _| to("h"),
        );
        assert_eq!(
            (off.status, off.registration.as_deref()),
            (200, Some("disabled"))
        );
        let op = book
            .register(&attested(false), T0, Duration::ZERO, 2)
            .operation_id
            .unwrap();
        let off = book.poll("d", &op, (now(), T0), 2, None, false, |_, _| to("h"));
        assert_eq!(off.registration.as_deref(), Some("disabled"));
        let op = book
            .register(&attested(true), T0, Duration::ZERO, 2)
            .operation_id
            .unwrap();
        let failed = book.poll("d", &op, (now(), T0), 2, None, false, |_, _| {
            Err("no hub".into())
        });
        assert_eq!(failed.registration.as_deref(), Some("failed"));
        assert_eq!(failed.body["registrationState"]["errorMessage"], "no hub");
    }

    #[test]
    fn the_sixth_poll_in_ten_seconds_is_throttled() {
        let mut book = Book::new(1);
        let at = |s: u64| T0 + Duration::from_secs(s);
        for s in [0, 2, 4, 6, 8] {
            assert_eq!(book.over_poll_limit("d", at(s)), None, "poll at {s}");
        }
        assert_eq!(book.over_poll_limit("d", at(9)), Some(1));
        // Every 2 s keeps within the limit.
        assert_eq!(book.over_poll_limit("d", at(10)), None);
        assert_eq!(book.over_poll_limit("e", at(9)), None, "per registration");
    }

    #[test]
    fn seven_digit_times() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(dps_time(t), "2023-11-14T22:13:20.1230000Z");
    }
}
