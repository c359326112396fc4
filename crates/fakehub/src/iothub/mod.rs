//! The Azure IoT Hub dialect on top of MQTT: usernames, the topic space, property bags.

pub mod properties;
pub mod topics;
pub mod username;
