//! The sample device: a well-behaved reference IoT Hub device with switchable bugs, used in-process
//! (with the hub's shared clock) and as the `sample-device` binary (the scenario runner's default
//! device under test).

pub mod cli;
pub use fakehub_protocol::connection_string;
pub mod device;
pub mod in_process;
pub mod provision;

pub use connection_string::ConnectionString;
pub use device::{Bug, ClientCertificate, Device, DeviceError, DeviceEvent, DeviceOptions, Dial};
pub use in_process::InProcess;
pub use provision::Provisioning;
