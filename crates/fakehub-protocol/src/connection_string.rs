//! IoT Hub device connection strings: `HostName=…;DeviceId=…;SharedAccessKey=…[;ModuleId=…][;GatewayHostName=host[:port]]`,
//! or with `x509=true` in place of the key for a device that authenticates with a certificate.

use crate::identity::IdentityRef;

/// A parsed connection string. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    pub host_name: String,
    pub identity: IdentityRef,
    /// Empty for an X.509 device.
    pub shared_access_key: String,
    /// `x509=true`: the device authenticates with a client certificate, not a SAS token.
    pub x509: bool,
    /// Where to open TLS: `GatewayHostName` (with an optional `:port`, a fakehub extension for hubs
    /// not on 8883) or else `HostName`.
    pub gateway_host: String,
    pub port: u16,
}

impl std::fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionString")
            .field("host_name", &self.host_name)
            .field("identity", &self.identity)
            .field("gateway_host", &self.gateway_host)
            .field("port", &self.port)
            .field("x509", &self.x509)
            .finish_non_exhaustive()
    }
}

/// What is wrong with a connection string (never quotes the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    #[error("the connection string has no {0}")]
    Missing(&'static str),
    #[error("GatewayHostName has a bad port")]
    BadPort,
}

impl ConnectionString {
    pub fn parse(s: &str) -> Result<Self, ConnectionStringError> {
        let mut get = std::collections::HashMap::new();
        for part in s.trim().split(';').filter(|p| !p.is_empty()) {
            if let Some((k, v)) = part.split_once('=') {
                get.insert(k.trim().to_owned(), v.trim().to_owned());
            }
        }
        let take = |k: &'static str| get.get(k).cloned().ok_or(ConnectionStringError::Missing(k));
        let host_name = take("HostName")?;
        let device_id = take("DeviceId")?;
        let x509 = get
            .get("x509")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let shared_access_key = match (take("SharedAccessKey"), x509) {
            (Ok(k), _) => k,
            (Err(_), true) => String::new(),
            (Err(e), false) => return Err(e),
        };
        let gateway = get
            .get("GatewayHostName")
            .cloned()
            .unwrap_or_else(|| host_name.clone());
        let (gateway_host, port) = match gateway.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => (
                h.trim_matches(['[', ']']).to_owned(),
                p.parse().map_err(|_| ConnectionStringError::BadPort)?,
            ),
            _ => (gateway, 8883),
        };
        Ok(ConnectionString {
            host_name,
            identity: IdentityRef {
                device_id,
                module_id: get.get("ModuleId").cloned(),
            },
            shared_access_key,
            x509,
            gateway_host,
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_x509_device_needs_no_key() {
        let c = ConnectionString::parse("HostName=h.example;DeviceId=cam;x509=true").unwrap();
        assert!(c.x509);
        assert!(c.shared_access_key.is_empty());
        assert_eq!(
            ConnectionString::parse("HostName=h.example;DeviceId=cam"),
            Err(ConnectionStringError::Missing("SharedAccessKey"))
        );
    }

    #[test]
    fn with_and_without_a_gateway_port() {
        let c = ConnectionString::parse(
            "HostName=h.example;DeviceId=d;SharedAccessKey=a2V5;GatewayHostName=localhost:4567",
        )
        .unwrap();
        assert_eq!((c.gateway_host.as_str(), c.port), ("localhost", 4567));
        let c = ConnectionString::parse(
            "HostName=h.example;DeviceId=d;ModuleId=m;SharedAccessKey=a2V5",
        )
        .unwrap();
        assert_eq!((c.gateway_host.as_str(), c.port), ("h.example", 8883));
        assert_eq!(c.identity.module_id.as_deref(), Some("m"));
        assert_eq!(
            ConnectionString::parse("HostName=h;DeviceId=d"),
            Err(ConnectionStringError::Missing("SharedAccessKey"))
        );
        assert!(!format!("{c:?}").contains("a2V5"));
    }
}
