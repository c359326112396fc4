//! The CONNECT username as IoT Hub parses it: `{host}/{device}[/{module}]/?{query}`, leniently;
//! and the Device Provisioning Service's, `{idScope}/registrations/{registrationId}/api-version=…`
//! ([`DpsUsername`]), which tells a provisioning connection apart from a hub connection on the same
//! listener.
//!
//! SDKs differ (research §1.2): Python and Node put `?` after a trailing `/`, old docs show
//! `{host}/{device}/api-version=…` with no `?`, and query keys come in any order. Unknown keys are
//! ignored; values are percent-decoded (keys too, as some SDKs encode `$`).

use crate::identity::IdentityRef;

/// What a username says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username {
    pub host: String,
    pub identity: IdentityRef,
    /// `api-version`, when given.
    pub api_version: Option<String>,
    /// `DeviceClientType`: the SDK's user agent, shown as `sdkVersion` in Connections records.
    pub client_type: Option<String>,
    /// `model-id` (IoT Plug and Play), when given.
    pub model_id: Option<String>,
}

/// Why a username could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    #[error("the CONNECT has no username")]
    Missing,
    #[error("the username is not `{{host}}/{{device}}[/{{module}}]/?api-version=…`")]
    Shape,
}

fn decode(s: &str) -> String {
    crate::percent::decode_lossy(s).into_owned()
}

impl Username {
    pub fn parse(raw: &str) -> Result<Username, UsernameError> {
        if raw.is_empty() {
            return Err(UsernameError::Missing);
        }
        let (path, query) = match raw.split_once('?') {
            Some((p, q)) => (p, q),
            None => match raw.find("/api-version=") {
                Some(i) => (&raw[..i + 1], &raw[i + 1..]),
                None => (raw, ""),
            },
        };
        let mut segments = path.trim_end_matches('/').split('/');
        let host = segments
            .next()
            .filter(|s| !s.is_empty())
            .ok_or(UsernameError::Shape)?;
        let device = segments
            .next()
            .filter(|s| !s.is_empty())
            .ok_or(UsernameError::Shape)?;
        let module = segments.next().filter(|s| !s.is_empty());
        if segments.next().is_some() {
            return Err(UsernameError::Shape);
        }
        let mut name = Username {
            host: host.to_owned(),
            identity: IdentityRef {
                device_id: device.to_owned(),
                module_id: module.map(str::to_owned),
            },
            api_version: None,
            client_type: None,
            model_id: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let value = Some(decode(v));
            match crate::percent::decode_lossy(k).as_ref() {
                "api-version" => name.api_version = value,
                "DeviceClientType" => name.client_type = value,
                "model-id" => name.model_id = value,
                _ => {}
            }
        }
        Ok(name)
    }
}

/// What a Device Provisioning Service username says:
/// `{idScope}/registrations/{registrationId}/api-version=…[&ClientVersion=…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpsUsername {
    pub id_scope: String,
    pub registration_id: String,
    pub api_version: Option<String>,
    /// `ClientVersion`: the SDK's user agent.
    pub client_version: Option<String>,
}

impl DpsUsername {
    /// Read a DPS username. Hub usernames never read as one: after `{scope}/registrations/{id}/`
    /// DPS puts its query with no `?` (a hub module username has `/?` there).
    pub fn parse(raw: &str) -> Result<DpsUsername, UsernameError> {
        if raw.is_empty() {
            return Err(UsernameError::Missing);
        }
        let mut parts = raw.splitn(4, '/');
        let (Some(scope), Some("registrations"), Some(registration), Some(query)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(UsernameError::Shape);
        };
        if scope.is_empty() || registration.is_empty() || !query.starts_with("api-version=") {
            return Err(UsernameError::Shape);
        }
        let mut name = DpsUsername {
            id_scope: decode(scope),
            registration_id: decode(registration),
            api_version: None,
            client_version: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match crate::percent::decode_lossy(k).as_ref() {
                "api-version" => name.api_version = Some(decode(v)),
                "ClientVersion" => name.client_version = Some(decode(v)),
                _ => {}
            }
        }
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_sdk_username() {
        let u = Username::parse(
            "myhub.azure-devices.net/sensor-1/?api-version=2019-10-01&DeviceClientType=azure-iot-device-iothub-py%2F2.14.0%28cpython%203.11%3BLinux%29",
        )
        .unwrap();
        assert_eq!(u.host, "myhub.azure-devices.net");
        assert_eq!(u.identity.device_id, "sensor-1");
        assert_eq!(u.identity.module_id, None);
        assert_eq!(u.api_version.as_deref(), Some("2019-10-01"));
        assert_eq!(
            u.client_type.as_deref(),
            Some("azure-iot-device-iothub-py/2.14.0(cpython 3.11;Linux)")
        );
    }

    #[test]
    fn module_and_model_id_in_any_order() {
        let u = Username::parse(
            "h.example/dev/mod/?DeviceClientType=iothubclient%2f1.15.0&model-id=dtmi%3Acom%3Aexample%3Bx%3B1&api-version=2020-09-30",
        )
        .unwrap();
        assert_eq!(u.identity.module_id.as_deref(), Some("mod"));
        assert_eq!(u.model_id.as_deref(), Some("dtmi:com:example;x;1"));
        assert_eq!(u.client_type.as_deref(), Some("iothubclient/1.15.0"));
    }

    #[test]
    fn old_form_without_question_mark() {
        let u = Username::parse("h.example/dev/api-version=2016-11-14").unwrap();
        assert_eq!(u.identity.device_id, "dev");
        assert_eq!(u.identity.module_id, None);
        assert_eq!(u.api_version.as_deref(), Some("2016-11-14"));
    }

    #[test]
    fn dps_usernames_of_both_sdks_and_never_a_hub_one() {
        let py = DpsUsername::parse("0ne00000001/registrations/py-dev-01/api-version=2019-03-31&ClientVersion=azure-iot-device-provisioning-py%2F2.14.0%283.11.7%29").unwrap();
        assert_eq!(py.id_scope, "0ne00000001");
        assert_eq!(py.registration_id, "py-dev-01");
        assert_eq!(py.api_version.as_deref(), Some("2019-03-31"));
        assert_eq!(
            py.client_version.as_deref(),
            Some("azure-iot-device-provisioning-py/2.14.0(3.11.7)")
        );
        let node = DpsUsername::parse("0ne00000001/registrations/node-dev-01/api-version=2019-03-31&ClientVersion=azure-iot-provisioning-device%2F1.9.1").unwrap();
        assert_eq!(node.registration_id, "node-dev-01");
        for hub in [
            "myhub.azure-devices.net/registrations/mod/?api-version=2021-04-12",
            "myhub.azure-devices.net/registrations/api-version=2016-11-14",
            "myhub.azure-devices.net/sensor-1/?api-version=2021-04-12",
            "scope/registrations//api-version=2019-03-31",
            "",
        ] {
            assert!(DpsUsername::parse(hub).is_err(), "{hub}");
        }
    }

    #[test]
    fn bad_shapes() {
        assert_eq!(Username::parse(""), Err(UsernameError::Missing));
        assert_eq!(Username::parse("justahost"), Err(UsernameError::Shape));
        assert_eq!(Username::parse("h//?x=1"), Err(UsernameError::Shape));
        assert_eq!(Username::parse("h/a/b/c/?x"), Err(UsernameError::Shape));
    }
}
