//! What a fakehub hub and the devices under test share.
//!
//! * [`codec`]: MQTT 3.1.1 framing over any byte stream.
//! * [`identity`], [`username`], [`topics`], [`properties`]: the IoT Hub dialect of MQTT — who a
//!   client is, what its CONNECT username says, which topics it may use, and property bags.
//! * [`percent`]: percent-decoding of what devices send, with a fast path for plain text.
//! * [`sas`]: SAS tokens (parse, verify over the raw `sr`, mint).
//! * [`dps`]: the Device Provisioning Service's dialect (topics, bodies, group key derivation).
//! * [`tls`]: certificates (CA, server, device) and TLS configurations.
//! * [`connection_string`]: device connection strings.
//! * [`result_code`]: IoT Hub result codes.
//! * [`host`]: what an in-process device needs of its hub.
//! * [`transport`]: TCP or in-memory streams, with or without TLS.
//! * [`clock`]: virtual time and how devices read it.

pub mod clock;
pub mod codec;
pub mod connection_string;
pub mod dps;
pub mod host;
pub mod identity;
pub mod percent;
pub mod properties;
pub mod result_code;
pub mod sas;
pub mod tls;
pub mod topics;
pub mod transport;
pub mod username;

pub use host::{shutdown_signal, InProcessHub};
pub use identity::IdentityRef;
pub use result_code::ResultCode;
