//! `fakehub serve --config FILE`: a long-running hub for manual reproduction and for test suites in
//! other languages. Runs until SIGINT or SIGTERM, then closes every connection and flushes its files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fakehub::{Dps, DpsConfig, Hub, HubBuilder, HubHandle, SymmetricKeys};
use serde::Deserialize;

use crate::input::{self, InputError};

/// The serve configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// The IoT Hub host name devices use in usernames and SAS audiences.
    #[serde(default = "default_host")]
    pub host_name: String,
    /// Where to listen. Real Azure SDKs can only reach port 8883.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Output directory: `ca.pem` (before listening), `events.jsonl`, `connections.jsonl`.
    #[serde(default = "default_out")]
    pub out: PathBuf,
    /// A directory written by `fakehub certs` whose CA to reuse (so devices keep trusting it).
    #[serde(default)]
    pub ca_dir: Option<PathBuf>,
    /// Time after a token's expiry before the hub drops the connection (default 5m).
    #[serde(default, with = "humantime_serde")]
    pub token_grace: Option<Duration>,
    /// The longest idle window whatever the keep-alive (default 1767s).
    #[serde(default, with = "humantime_serde")]
    pub keepalive_cap: Option<Duration>,
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// A Device Provisioning Service served on the hub's listener (devices then need no
    /// connection string: `OUT/dps.json` says where to register, with which scope and keys).
    #[serde(default)]
    pub dps: Option<DpsConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub id: String,
    /// Base64. When absent, keys are generated and written to `OUT/connection-strings.txt`.
    #[serde(default)]
    pub primary_key: Option<String>,
    #[serde(default)]
    pub secondary_key: Option<String>,
    #[serde(default)]
    pub modules: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub name: String,
    pub primary_key: String,
    #[serde(default)]
    pub secondary_key: Option<String>,
    #[serde(default = "yes")]
    pub device_connect: bool,
}

fn default_host() -> String {
    "fakehub.azure-devices.net".to_owned()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8883))
}
fn default_out() -> PathBuf {
    PathBuf::from("fakehub-out")
}
fn yes() -> bool {
    true
}

impl ServeConfig {
    /// Read and check a config file; errors name the file, line and column.
    pub fn load(path: &Path) -> Result<ServeConfig, InputError> {
        let config: ServeConfig = input::read_yaml(path)?;
        if let Some(dps) = &config.dps {
            fakehub::dps::Enrollments::new(&dps.individual, &dps.groups).map_err(|e| {
                InputError::Invalid {
                    path: path.to_owned(),
                    message: format!("dps: {e}"),
                }
            })?;
        }
        for d in &config.devices {
            for key in d.primary_key.iter().chain(d.secondary_key.iter()) {
                if fakehub::sas::mint("check", key, None, std::time::UNIX_EPOCH).is_err() {
                    return Err(InputError::Invalid {
                        path: path.to_owned(),
                        message: format!("device '{}': the key is not valid base64", d.id),
                    });
                }
            }
        }
        Ok(config)
    }

    fn builder(&self, dps: Option<&Dps>) -> Result<HubBuilder, InputError> {
        let mut b = Hub::builder()
            .host_name(self.host_name.clone())
            .listen(self.listen)
            .out_dir(self.out.clone());
        if let Some(dps) = dps {
            b = b.dps(dps.clone());
        }
        if let Some(g) = self.token_grace {
            b = b.token_grace(g);
        }
        if let Some(c) = self.keepalive_cap {
            b = b.keepalive_cap(c);
        }
        if let Some(dir) = &self.ca_dir {
            let read = |name: &str| {
                let p = dir.join(name);
                std::fs::read_to_string(&p).map_err(|e| InputError::Io { path: p, source: e })
            };
            let certs = fakehub::tls::HubCertificates::from_ca_pem(
                &read("ca.pem")?,
                &read("ca-key.pem")?,
                &self.host_name,
            )
            .map_err(|e| InputError::Invalid {
                path: dir.clone(),
                message: e.to_string(),
            })?;
            b = b.certificates(certs);
        }
        for d in &self.devices {
            let keys = match &d.primary_key {
                Some(primary) => SymmetricKeys {
                    primary_key: primary.clone(),
                    secondary_key: d.secondary_key.clone(),
                },
                None => SymmetricKeys::generate(),
            };
            b = b.device_with_keys(d.id.clone(), keys);
            for m in &d.modules {
                b = b.module(&d.id, m.clone());
            }
        }
        for p in &self.policies {
            let keys = SymmetricKeys {
                primary_key: p.primary_key.clone(),
                secondary_key: p.secondary_key.clone(),
            };
            b = b.policy(p.name.clone(), keys, p.device_connect);
        }
        Ok(b)
    }
}

/// Run the hub until a signal arrives.
pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let dps = config
        .dps
        .as_ref()
        .map(|c| Dps::new(c, 0))
        .transpose()?;
    let hub = config.builder(dps.as_ref())?.build()?.start().await?;
    // Connection strings carry keys: they go to a file in the output directory, never to the terminal.
    let mut strings = String::new();
    for d in &config.devices {
        if let Some(s) = hub.connection_string(&d.id) {
            strings.push_str(&s);
            strings.push('\n');
        }
        for m in &d.modules {
            if let Some(s) = hub.module_connection_string(&d.id, m) {
                strings.push_str(&s);
                strings.push('\n');
            }
        }
    }
    let strings_path = config.out.join("connection-strings.txt");
    write_private(&strings_path, &strings)?;
    if let Some(dps) = &dps {
        let path = config.out.join("dps.json");
        write_private(&path, &provisioning_sheet(&hub, dps))?;
        eprintln!(
            "fakehub: provisioning service (ID scope {}) on the same listener: register at {}; scope and keys in {}",
            dps.id_scope(),
            hub.gateway_host(),
            path.display()
        );
    }
    eprintln!(
        "fakehub: hub '{}' listening on {} ({} devices); CA in {}; connection strings in {}; Ctrl-C stops",
        hub.host_name(),
        hub.local_addr(),
        config.devices.len(),
        config.out.join("ca.pem").display(),
        strings_path.display(),
    );
    fakehub::shutdown_signal().await;
    eprintln!("fakehub: stopping; writing {}", config.out.display());
    hub.shutdown().await?;
    Ok(())
}

/// What a device needs to provision (`OUT/dps.json`; it holds keys: written 0600, never printed):
/// where to register (the hub's listener stands in for `global.azure-devices-provisioning.net`),
/// the ID scope, and the keys of the enrollments (a group device derives its own).
fn provisioning_sheet(hub: &HubHandle, dps: &Dps) -> String {
    let e = dps.enrollments();
    let sheet = serde_json::json!({
        "provisioning_host": hub.gateway_host(),
        "global_endpoint": fakehub::dps::wire::GLOBAL_HOST,
        "id_scope": dps.id_scope(),
        "assigned_hub": hub.device_host(),
        "individual": e.individual.iter().map(|i| serde_json::json!({
            "registration_id": i.registration_id,
            "primary_key": i.primary_key,
            "secondary_key": i.secondary_key,
            "x509": i.x509,
        })).collect::<Vec<_>>(),
        "groups": e.groups.iter().map(|g| serde_json::json!({
            "name": g.name,
            "primary_key": g.primary_key,
            "secondary_key": g.secondary_key,
            "x509": g.x509,
        })).collect::<Vec<_>>(),
        "group_device_key": "base64(HMAC-SHA256(key = base64-decoded group key, message = registration id))",
    });
    serde_json::to_string_pretty(&sheet).unwrap_or_default()
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

/// `fakehub certs --out DIR`: a CA for devices to trust (`ca.pem`) and its key (`ca-key.pem`, for
/// `serve`'s `ca_dir`).
pub fn certs(out: &Path) -> anyhow::Result<()> {
    let certs = fakehub::tls::HubCertificates::generate("fakehub.azure-devices.net")?;
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("ca.pem"), certs.ca_pem())?;
    write_private(&out.join("ca-key.pem"), certs.ca_key_pem())?;
    eprintln!(
        "fakehub: wrote {} (trust this on the device) and ca-key.pem (for serve's ca_dir)",
        out.join("ca.pem").display()
    );
    Ok(())
}
