//! The CONNECT username as IoT Hub parses it: `{host}/{device}[/{module}]/?{query}`, leniently.
//!
//! SDKs differ (research §1.2): Python and Node put `?` after a trailing `/`, old docs show
//! `{host}/{device}/api-version=…` with no `?`, and query keys come in any order. Unknown keys are
//! ignored; values are percent-decoded (keys too, as some SDKs encode `$`).

use percent_encoding::percent_decode_str;

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
    percent_decode_str(s).decode_utf8_lossy().into_owned()
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
            match decode(k).as_str() {
                "api-version" => name.api_version = value,
                "DeviceClientType" => name.client_type = value,
                "model-id" => name.model_id = value,
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
    fn bad_shapes() {
        assert_eq!(Username::parse(""), Err(UsernameError::Missing));
        assert_eq!(Username::parse("justahost"), Err(UsernameError::Shape));
        assert_eq!(Username::parse("h//?x=1"), Err(UsernameError::Shape));
        assert_eq!(Username::parse("h/a/b/c/?x"), Err(UsernameError::Shape));
    }
}
