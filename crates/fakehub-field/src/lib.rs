//! Field logs: read the IoT Hub `Connections` resource logs users export (Log Analytics CSV and
//! JSON, storage-account blobs, Event Hub bodies and Capture files, fakehub's own
//! `connections.jsonl`), diagnose the 404104 patterns per device and for the fleet, write the
//! scenario that reproduces each finding, and compare a reproduction with the field.
//!
//! See docs/FIELD.md for the accepted shapes, the evidence behind them, and the diagnosis rules.

pub mod avro;
pub mod compare;
pub mod diagnose;
pub mod export;
pub mod import;
mod jsonpos;
pub mod record;
pub mod report;
pub mod scenario;
pub mod time;

pub use diagnose::{diagnose, Finding, HubDiagnosis, Pattern};
pub use import::{import_files, Import, Shape};
pub use record::{FieldError, FieldRecord, Operation, Source};
