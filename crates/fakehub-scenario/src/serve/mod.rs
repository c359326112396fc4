//! `fakehub serve --config FILE`: a long-running hub for manual reproduction and for test suites in
//! other languages. Runs until SIGINT or SIGTERM, then closes every connection and flushes its files.
//! Its output directory is its own while it runs (see [`fakehub::HubBuilder::out_dir`]); its console
//! gets one line per refused connection ([`console`]).

pub mod console;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fakehub::{Dps, DpsConfig, Hub, HubBuilder, HubHandle, SymmetricKeys};
use serde::Deserialize;

use crate::input::{self, InputError};
use crate::output::write_private;
use crate::tell;

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
    /// Where the service REST API and the control API listen (HTTPS; default 127.0.0.1:443, the
    /// port the service SDKs use); `null` switches them off (as does `--no-service-api`).
    #[serde(default = "default_service_listen")]
    pub service_listen: Option<SocketAddr>,
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
    /// X.509 authentication besides the keys: `{ca: true}` (a certificate issued by a CA the hub
    /// trusts, its own included, with CN = the device id: `fakehub certs --device ID`), or
    /// `{thumbprint: "…"}` (a self-signed certificate, SHA-1 or SHA-256 hex).
    #[serde(default)]
    pub x509: Option<X509Config>,
}

/// How a device authenticates with a certificate.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct X509Config {
    /// Certificates issued by a CA the hub trusts.
    #[serde(default)]
    pub ca: bool,
    /// A self-signed certificate's thumbprint.
    #[serde(default)]
    pub thumbprint: Option<String>,
    #[serde(default)]
    pub secondary_thumbprint: Option<String>,
}

impl X509Config {
    /// What the registry keeps, or why the entry makes no sense.
    pub fn auth(&self) -> Result<fakehub::X509Auth, String> {
        let hex = |t: &str| {
            let clean: String = t.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
            let ok = (clean.len() == 40 || clean.len() == 64)
                && clean.chars().all(|c| c.is_ascii_hexdigit());
            ok.then_some(clean)
                .ok_or_else(|| format!("`{t}` is not a SHA-1 (40) or SHA-256 (64) hex thumbprint"))
        };
        match (self.ca, &self.thumbprint) {
            (true, None) if self.secondary_thumbprint.is_none() => {
                Ok(fakehub::X509Auth::CertificateAuthority)
            }
            (false, Some(primary)) => Ok(fakehub::X509Auth::SelfSigned {
                primary: hex(primary)?,
                secondary: self.secondary_thumbprint.as_deref().map(hex).transpose()?,
            }),
            _ => Err("`x509` takes either `ca: true` or `thumbprint` (with an optional `secondary_thumbprint`)".to_owned()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub name: String,
    pub primary_key: String,
    #[serde(default)]
    pub secondary_key: Option<String>,
    /// Tokens may connect as any device (default yes).
    #[serde(default = "yes")]
    pub device_connect: bool,
    /// Read the registry over the service API.
    #[serde(default)]
    pub registry_read: bool,
    /// Change the registry (includes reading).
    #[serde(default)]
    pub registry_write: bool,
    /// Twins, methods, C2D and the control API.
    #[serde(default)]
    pub service_connect: bool,
}

fn default_host() -> String {
    "fakehub.azure-devices.net".to_owned()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8883))
}
fn default_service_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 443)))
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
        let invalid = |message: String| InputError::Invalid {
            path: path.to_owned(),
            message,
        };
        let longest = crate::scenario::MAX_VIRTUAL_TIME;
        for (key, d) in [
            ("token_grace", config.token_grace),
            ("keepalive_cap", config.keepalive_cap),
        ] {
            if d.is_some_and(|d| d > longest) {
                return Err(invalid(format!("`{key}` may be at most {longest:?}")));
            }
        }
        if config
            .keepalive_cap
            .is_some_and(|c| c < crate::scenario::MIN_KEEPALIVE_CAP)
        {
            return Err(invalid(
                "`keepalive_cap` may be 1s to 31days (0 would close every connection at once)"
                    .into(),
            ));
        }
        if let Some(dps) = &config.dps {
            fakehub::dps::Enrollments::new(&dps.individual, &dps.groups)
                .map_err(|e| invalid(format!("dps: {e}")))?;
        }
        for d in &config.devices {
            if let Some(x) = &d.x509 {
                x.auth().map_err(|message| InputError::Invalid {
                    path: path.to_owned(),
                    message: format!("device '{}': {message}", d.id),
                })?;
            }
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
            if let Some(auth) = d.x509.as_ref().and_then(|x| x.auth().ok()) {
                b = b.x509(&fakehub::IdentityRef::device(&d.id), auth);
            }
            for m in &d.modules {
                b = b.module(&d.id, m.clone());
            }
        }
        for p in &self.policies {
            let keys = SymmetricKeys {
                primary_key: p.primary_key.clone(),
                secondary_key: p.secondary_key.clone(),
            };
            let rights = fakehub::Rights {
                registry_read: p.registry_read,
                registry_write: p.registry_write,
                service_connect: p.service_connect,
                device_connect: p.device_connect,
            };
            b = b.policy_with_rights(p.name.clone(), keys, rights);
        }
        Ok(b)
    }
}

/// Run the hub until a signal arrives; `service_api` false leaves the service and control APIs off
/// whatever the config says.
pub async fn serve(config: ServeConfig, service_api: bool) -> anyhow::Result<()> {
    let dps = config.dps.as_ref().map(|c| Dps::new(c, 0)).transpose()?;
    // Handshakes and CONNECTs on every core, established traffic on one event loop (declared
    // first: it outlives the hub, whose shutdown waits for the connections it serves).
    let live = fakehub::LiveThread::start()?;
    let hub = Arc::new(
        config
            .builder(dps.as_ref())?
            .live_runtime(live.runtime())
            .build()?
            .start()
            .await?,
    );
    // Connection strings carry keys: they go to files in the output directory, never to the
    // terminal.
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
        tell!(
            "fakehub: provisioning service (ID scope {}) on the same listener: register at {}; scope and keys in {}",
            dps.id_scope(),
            hub.gateway_host(),
            path.display()
        );
    }
    let service_path = config.out.join("service-connection-string.txt");
    if let Some(s) = hub.service_connection_string() {
        write_private(&service_path, &format!("{s}\n"))?;
    }
    let api = match config.service_listen.filter(|_| service_api) {
        Some(addr) => {
            let listener = fakehub::service_api::bind(&hub, addr).await?;
            let control = crate::control::Control {
                hub: hub.clone(),
                stopping: listener.stopping(),
            };
            let app =
                fakehub::service_api::router(hub.clone()).merge(crate::control::router(control));
            Some(listener.serve(app))
        }
        None => None,
    };
    let api_line = match &api {
        Some(a) => format!(
            "; service API on https://{} (connection string in {})",
            a.local_addr(),
            service_path.display()
        ),
        None => String::new(),
    };
    tell!(
        "fakehub: hub '{}' listening on {} ({} devices){api_line}; CA in {}; connection strings in {}; Ctrl-C stops",
        hub.host_name(),
        hub.local_addr(),
        config.devices.len(),
        config.out.join("ca.pem").display(),
        strings_path.display(),
    );
    // The console follows the connection events only: pushed to it as they happen (the events
    // before it started read from the log), so that messages cost it nothing.
    let mut tap = hub.event_tap(console::follows);
    let before = hub.events_since(0);
    let console = tokio::spawn(async move {
        let mut console = console::Console::default();
        let past = before
            .into_iter()
            .filter(|e| e.seq < tap.from && console::follows(&e.kind));
        for e in past {
            if let Some(line) = console.line(&e) {
                tell!("{line}");
            }
        }
        while let Some(e) = tap.events.recv().await {
            if let Some(line) = console.line(&e) {
                tell!("{line}");
            }
        }
    });
    fakehub::shutdown_signal().await;
    console.abort();
    tell!("fakehub: stopping; writing {}", config.out.display());
    if let Some(api) = api {
        api.shutdown().await;
    }
    match Arc::try_unwrap(hub) {
        Ok(hub) => hub.shutdown().await?,
        Err(_) => anyhow::bail!("the hub is still in use while stopping"),
    }
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

/// `fakehub certs --out DIR`: a CA for devices to trust (`ca.pem`) and its key (`ca-key.pem`, for
/// `serve`'s `ca_dir`). With `device`: a device certificate (`ID.pem`, `ID.key`) with CN = the id,
/// issued by the CA in `DIR` (made first if there is none), or self-signed; its thumbprints are
/// printed (they are not secrets).
pub fn certs(out: &Path, device: Option<&str>, self_signed: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let (ca_path, key_path) = (out.join("ca.pem"), out.join("ca-key.pem"));
    let Some(id) = device else {
        let certs = fakehub::tls::HubCertificates::generate("fakehub.azure-devices.net")?;
        std::fs::write(&ca_path, certs.ca_pem())?;
        write_private(&key_path, certs.ca_key_pem())?;
        tell!(
            "fakehub: wrote {} (trust this on the device) and ca-key.pem (for serve's ca_dir)",
            ca_path.display()
        );
        return Ok(());
    };
    if id.is_empty() || id.contains(['/', '+', '#', '\\']) || id.starts_with('.') {
        anyhow::bail!("`{id}` is not a device id (no /, +, #, \\, no leading .)");
    }
    let cert = if self_signed {
        fakehub::tls::DeviceCertificate::self_signed(id)?
    } else {
        if !ca_path.exists() {
            certs(out, None, false)?;
        }
        let ca = fakehub::tls::HubCertificates::from_ca_pem(
            &std::fs::read_to_string(&ca_path)?,
            &std::fs::read_to_string(&key_path)?,
            "fakehub.azure-devices.net",
        )?;
        ca.issue_device_certificate(id)?
    };
    std::fs::write(out.join(format!("{id}.pem")), &cert.cert_pem)?;
    write_private(&out.join(format!("{id}.key")), &cert.key_pem)?;
    let how = if self_signed {
        format!(
            "self-signed; register it with x509: {{thumbprint: {}}}",
            cert.thumbprints.sha1
        )
    } else {
        "issued by this CA; register it with x509: {ca: true} and serve's ca_dir".to_owned()
    };
    tell!(
        "fakehub: wrote {} and {id}.key for device '{id}' ({how}); thumbprints SHA-1 {} SHA-256 {}",
        out.join(format!("{id}.pem")).display(),
        cert.thumbprints.sha1,
        cert.thumbprints.sha256
    );
    Ok(())
}
