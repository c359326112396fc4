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
pub use rules::{
    backoff, connected, fleet_spread, graceful_disconnect, keepalive, no_message_loss,
    no_tight_loop, records, recovers, renews_token, resubscribes, BackoffRule, Ledger, RecordRule,
    Verdict,
};
