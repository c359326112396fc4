//! Assertions over what a fakehub hub observed. Each reads only the event log, and on failure says
//! which device broke which rule, with the numbers and the events around the violation.
//!
//! ```no_run
//! # async fn demo(hub: fakehub::HubHandle) {
//! use std::time::Duration;
//! let log = fakehub_assert::Log::of(&hub);
//! fakehub_assert::recovers(&log, "sensor-1", Duration::from_secs(60)).assert();
//! fakehub_assert::renews_token(&log, "sensor-1").assert();
//! # }
//! ```

pub mod expect;
pub mod log;
pub mod rules;

pub use expect::{Expectation, TimeWindow};
pub use log::Log;
pub use rules::connections::{
    backoff, connected, graceful_disconnect, keepalive, no_tight_loop, recovers, renews_token,
    BackoffRule,
};
pub use rules::fleet::fleet_spread;
pub use rules::messages::{no_message_loss, resubscribes, Ledger, LossRule};
pub use rules::provisioning::{honours_retry_after, provisions, reprovisions_after};
pub use rules::records::{records, RecordRule};
pub use rules::service::{c2d_delivered, desired_applied, method};
pub use rules::Verdict;
