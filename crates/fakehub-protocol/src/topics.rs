//! The device's topic space: what a device may publish and subscribe to, and what each topic means.
//!
//! IoT Hub "only supports the documented topic names and topic filters" (research §4.1): a publish or
//! subscribe outside them closes the connection. Device and module ids are not URL-encoded in topics.

use crate::identity::IdentityRef;
use crate::properties::PropertyBag;

/// What a device publish is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePublish {
    /// D2C telemetry with its decoded property bag.
    Telemetry(PropertyBag),
    /// `$iothub/twin/GET/?$rid=…`
    TwinGet { rid: String },
    /// `$iothub/twin/PATCH/properties/reported/?$rid=…`
    TwinPatchReported { rid: String },
    /// `$iothub/methods/res/{status}/?$rid=…`
    MethodResponse { status: i32, rid: String },
}

/// Why a topic or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("`{0}` is not a topic this device may publish to")]
    PublishNotAllowed(String),
    #[error("`{0}` is not a topic filter this device may subscribe to")]
    SubscribeNotAllowed(String),
}

/// The telemetry topic prefix of an identity.
pub fn telemetry_prefix(who: &IdentityRef) -> String {
    match &who.module_id {
        Some(m) => format!("devices/{}/modules/{}/messages/events", who.device_id, m),
        None => format!("devices/{}/messages/events", who.device_id),
    }
}

/// What follows [`telemetry_prefix`] in `topic`, when it starts with it: compared piece by piece,
/// since a device's every message is checked and the prefix need not be made for that.
fn strip_telemetry_prefix<'t>(who: &IdentityRef, topic: &'t str) -> Option<&'t str> {
    let rest = topic
        .strip_prefix("devices/")?
        .strip_prefix(who.device_id.as_str())?;
    let rest = match &who.module_id {
        Some(m) => rest.strip_prefix("/modules/")?.strip_prefix(m.as_str())?,
        None => rest,
    };
    rest.strip_prefix("/messages/events")
}

/// The C2D (device-bound) topic prefix of a device.
pub fn devicebound_prefix(device_id: &str) -> String {
    format!("devices/{device_id}/messages/devicebound")
}

fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Classify a device publish, or refuse it.
pub fn classify_publish(who: &IdentityRef, topic: &str) -> Result<DevicePublish, TopicError> {
    let refuse = || TopicError::PublishNotAllowed(topic.to_owned());
    if let Some(rest) = strip_telemetry_prefix(who, topic) {
        if rest.is_empty() {
            return Ok(DevicePublish::Telemetry(PropertyBag::default()));
        }
        if let Some(bag) = rest.strip_prefix('/') {
            return Ok(DevicePublish::Telemetry(PropertyBag::parse(bag)));
        }
        return Err(refuse());
    }
    if let Some(rest) = topic.strip_prefix("$iothub/") {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let rid = || {
            query_value(query, "$rid")
                .map(str::to_owned)
                .ok_or_else(refuse)
        };
        return match path.trim_end_matches('/') {
            "twin/GET" => Ok(DevicePublish::TwinGet { rid: rid()? }),
            "twin/PATCH/properties/reported" => {
                Ok(DevicePublish::TwinPatchReported { rid: rid()? })
            }
            p => match p.strip_prefix("methods/res/").map(str::parse::<i32>) {
                Some(Ok(status)) => Ok(DevicePublish::MethodResponse {
                    status,
                    rid: rid()?,
                }),
                _ => Err(refuse()),
            },
        };
    }
    Err(refuse())
}

/// What a subscription is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionKind {
    CloudToDevice,
    ModuleInputs,
    TwinResponses,
    DesiredProperties,
    Methods,
}

/// Check a subscribe filter against the documented ones for this identity.
pub fn classify_filter(who: &IdentityRef, filter: &str) -> Result<SubscriptionKind, TopicError> {
    let kind = match (&who.module_id, filter) {
        (_, "$iothub/twin/res/#") => SubscriptionKind::TwinResponses,
        (_, "$iothub/twin/PATCH/properties/desired/#") => SubscriptionKind::DesiredProperties,
        (_, "$iothub/methods/POST/#") => SubscriptionKind::Methods,
        // The second form is azure-sdk-for-c's (`AZ_IOT_HUB_CLIENT_C2D_SUBSCRIBE_TOPIC`); the core
        // narrows it to the device's own messages.
        (None, f)
            if f == format!("{}/#", devicebound_prefix(&who.device_id))
                || f == "devices/+/messages/devicebound/#" =>
        {
            SubscriptionKind::CloudToDevice
        }
        (Some(m), f)
            if f == format!("devices/{}/modules/{}/inputs/#", who.device_id, m)
                || f == format!("devices/{}/modules/{}/#", who.device_id, m) =>
        {
            SubscriptionKind::ModuleInputs
        }
        _ => return Err(TopicError::SubscribeNotAllowed(filter.to_owned())),
    };
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(d: &str) -> IdentityRef {
        IdentityRef {
            device_id: d.into(),
            module_id: None,
        }
    }

    #[test]
    fn telemetry_for_own_device_only() {
        let me = dev("sensor-1");
        match classify_publish(&me, "devices/sensor-1/messages/events/%24.mid=m-3&seq=3").unwrap() {
            DevicePublish::Telemetry(bag) => assert_eq!(bag.message_id(), Some("m-3")),
            other => panic!("{other:?}"),
        }
        assert!(classify_publish(&me, "devices/sensor-1/messages/events/").is_ok());
        assert!(classify_publish(&me, "devices/sensor-2/messages/events/").is_err());
        assert!(classify_publish(&me, "devices/sensor-1/messages/eventsX").is_err());
        assert!(classify_publish(&me, "anything/else").is_err());
    }

    #[test]
    fn module_telemetry_for_own_module_only() {
        let module = IdentityRef {
            device_id: "d".into(),
            module_id: Some("m".into()),
        };
        assert!(classify_publish(&module, "devices/d/modules/m/messages/events/").is_ok());
        assert!(classify_publish(&module, "devices/d/modules/m/messages/events").is_ok());
        assert!(classify_publish(&module, "devices/d/modules/m2/messages/events/").is_err());
        assert!(classify_publish(&module, "devices/d/messages/events/").is_err());
        assert!(classify_publish(&dev("d"), "devices/d/modules/m/messages/events/").is_err());
        assert!(classify_publish(&dev("sensor-1"), "devices/sensor-10/messages/events/").is_err());
    }

    proptest::proptest! {
        /// Comparing piece by piece finds what stripping the made prefix finds, for any
        /// identity and topic (ids drawn from a small alphabet, so that near misses are common).
        #[test]
        fn stripping_the_prefix_piece_by_piece_agrees_with_making_it(
            device in "[dm/s-]{0,4}",
            module in proptest::option::of("[dm/s-]{0,3}"),
            topic in "(devices/)?[dm/s-]{0,6}(/modules/[dm/s-]{0,3})?(/messages/events)?[/s]{0,2}",
        ) {
            let who = IdentityRef { device_id: device, module_id: module };
            proptest::prop_assert_eq!(
                strip_telemetry_prefix(&who, &topic),
                topic.strip_prefix(telemetry_prefix(&who).as_str())
            );
        }
    }

    #[test]
    fn iothub_topics() {
        let me = dev("d");
        assert_eq!(
            classify_publish(&me, "$iothub/twin/GET/?$rid=7").unwrap(),
            DevicePublish::TwinGet { rid: "7".into() }
        );
        assert_eq!(
            classify_publish(&me, "$iothub/methods/res/200/?$rid=ab-1").unwrap(),
            DevicePublish::MethodResponse {
                status: 200,
                rid: "ab-1".into()
            }
        );
        assert!(
            classify_publish(&me, "$iothub/twin/GET/").is_err(),
            "no $rid"
        );
        assert!(classify_publish(&me, "$iothub/methods/res/x/?$rid=1").is_err());
    }

    #[test]
    fn filters() {
        let me = dev("d");
        assert_eq!(
            classify_filter(&me, "devices/d/messages/devicebound/#").unwrap(),
            SubscriptionKind::CloudToDevice
        );
        assert_eq!(
            classify_filter(&me, "devices/+/messages/devicebound/#").unwrap(),
            SubscriptionKind::CloudToDevice
        );
        assert!(classify_filter(&me, "devices/e/messages/devicebound/#").is_err());
        assert!(classify_filter(&me, "devices/+/messages/devicebound/+").is_err());
        assert!(classify_filter(&me, "#").is_err());
        let module = IdentityRef {
            device_id: "d".into(),
            module_id: Some("m".into()),
        };
        assert_eq!(
            classify_filter(&module, "devices/d/modules/m/inputs/#").unwrap(),
            SubscriptionKind::ModuleInputs
        );
        assert!(classify_filter(&module, "devices/d/messages/devicebound/#").is_err());
        assert!(classify_filter(&module, "devices/+/messages/devicebound/#").is_err());
    }
}
