//! The Azure IoT Hub dialect on top of MQTT: usernames, the topic space, property bags, and the hub
//! services (twins, direct methods, cloud-to-device messages).

pub mod c2d;
pub mod methods;
pub mod services;
pub mod twin;

pub use fakehub_protocol::{properties, topics, username};
