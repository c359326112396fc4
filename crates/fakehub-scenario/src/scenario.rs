//! The scenario format: hub settings, devices, a timeline and expectations. Published as a JSON
//! Schema by `fakehub schema`. Errors name the file, line and column and nothing runs.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fakehub::faults::{Fault, FaultKind, Selector};
use fakehub::DpsConfig;
use fakehub_assert::Expectation;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::input::InputError;

/// One scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A short name; the output directory of a multi-scenario run is named after it.
    pub name: String,
    /// What field symptom this reproduces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "HubSettings::is_default")]
    pub hub: HubSettings,
    /// Several hubs instead of one (each with its `host_name`), behind the provisioning service:
    /// devices that `provision` are assigned among them; the others are registered in the first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hubs: Vec<HubSettings>,
    /// A Device Provisioning Service, served on every hub's listener and linked to every hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dps: Option<DpsConfig>,
    /// Seed for fault selection by percentage and the sample devices' jitter (`--seed` overrides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    pub devices: Vec<DeviceSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<Step>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect: Vec<Expectation>,
}

/// Hub settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HubSettings {
    /// The IoT Hub host name (default `fakehub.azure-devices.net`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
    /// Where to listen (default `127.0.0.1:0`; the Azure SDKs need port 8883).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub listen: Option<SocketAddr>,
    /// Time after a token's expiry before the hub drops the connection (default 5m).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub token_grace: Option<Duration>,
    /// The longest idle window, whatever the keep-alive (default 1767s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub keepalive_cap: Option<Duration>,
    /// Whether in-process devices do a TLS handshake over their in-memory connections (default
    /// true). TLS is not under test in a fleet run, and full handshakes are most of the work of a
    /// reconnect storm. Device processes always connect over TCP with TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_tls: Option<bool>,
    /// No longer used: time skips idle periods by itself (kept so older files get a clear error).
    #[serde(default, skip_serializing)]
    #[schemars(skip)]
    pub speed: Option<f64>,
}

impl Scenario {
    /// The hubs of the run: `hubs`, or the one `hub`.
    pub fn hub_settings(&self) -> Vec<HubSettings> {
        if self.hubs.is_empty() {
            vec![self.hub.clone()]
        } else {
            self.hubs.clone()
        }
    }
}

/// How a device provisions: with an individual enrollment of its own (added to the service's
/// enrollments with a generated key when not listed there), or through an enrollment group
/// (symmetric keys: its key is derived from the group's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Provision {
    Individual,
    Group(String),
}

/// How a device process sees time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClockAdapter {
    /// The hub's clock (the default): the process runs under fakehub's time preload, so its wall
    /// clock, monotonic clock, sleeps, timeouts and timers all follow virtual time, and the run skips
    /// whatever time every party spends idle. Unmodified programs: Node, CPython, native C, Rust.
    #[default]
    Hub,
    /// Real time, for black boxes that cannot run under the preload: the whole run then takes real
    /// time, and rules a run that short cannot judge say so.
    Real,
    /// Replaced by `hub` (kept so older files get a clear error).
    #[schemars(skip)]
    ClockFile,
    /// Replaced by `hub` (kept so older files get a clear error).
    #[schemars(skip)]
    Faketime,
    /// Replaced by `hub` (kept so older files get a clear error).
    #[schemars(skip)]
    Python,
}

/// A device, or a fleet of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    /// The device id (with `count`, the prefix: `id-0`, `id-1`, …).
    pub id: String,
    /// A fleet of this many identical devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// The command to run as the device (`sample-device` means the bundled one). Left out: the
    /// sample device runs in-process on the hub's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Vec<String>>,
    /// For `run` devices: how the process sees the hub's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<ClockAdapter>,
    /// For `run` devices: environment variables for the process (the hub's own —
    /// `FAKEHUB_CONNECTION_STRING`, `FAKEHUB_CA_FILE` and the time preload's — are set after these).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// For in-process sample devices: behaviours to get wrong (`no-token-renewal`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bugs: Vec<String>,
    /// For in-process sample devices: seconds between telemetry messages (default 60s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub telemetry_interval: Option<Duration>,
    /// For in-process sample devices: the MQTT keep-alive in seconds (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<u16>,
    /// Register with the provisioning service (`dps:`) to learn the hub, instead of being
    /// registered in the first hub: `individual`, or `{ group: NAME }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provision: Option<Provision>,
    /// Authenticate with a client certificate instead of SAS tokens: `ca` (issued by the hub's CA,
    /// CN = the device id) or `self_signed` (registered by its thumbprint). The runner makes the
    /// certificate; a device process gets `FAKEHUB_CERT_FILE` and `FAKEHUB_KEY_FILE` and a
    /// connection string with `x509=true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<X509Device>,
}

/// How an X.509 device's certificate is made and registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum X509Device {
    /// Issued by the hub's CA with CN = the device id.
    Ca,
    /// Self-signed; the hub knows it by its SHA-256 thumbprint.
    SelfSigned,
}

impl HubSettings {
    /// Nothing set: every default.
    pub fn is_default(&self) -> bool {
        *self == HubSettings::default()
    }
}

impl DeviceSpec {
    /// The device ids this entry stands for.
    pub fn ids(&self) -> Vec<String> {
        match self.count {
            Some(n) => (0..n).map(|i| format!("{}-{i}", self.id)).collect(),
            None => vec![self.id.clone()],
        }
    }
}

/// A device named in a timeline step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceRef {
    pub device: String,
}

/// A cloud-to-device message sent by the service side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct C2dStep {
    pub device: String,
    /// The body (text).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Application properties.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub properties: std::collections::BTreeMap<String, String>,
}

/// A desired-properties patch sent by the service side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DesiredStep {
    pub device: String,
    /// The patch (a JSON object).
    pub patch: serde_json::Value,
}

/// A direct method invoked by the service side; the runner waits for the answer (or the timeout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MethodStep {
    pub device: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub payload: serde_json::Value,
    /// How long to wait for the device (virtual elapsed time; default 30s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Duration>,
}

/// A fault of the timeline: the fault, and which hub (by host name; left out: every hub).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FaultStep {
    #[serde(flatten)]
    pub fault: Fault,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
}

impl From<Fault> for FaultStep {
    /// A fault on every hub of the run.
    fn from(fault: Fault) -> FaultStep {
        FaultStep { fault, hub: None }
    }
}

/// One step of the timeline, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Let this much virtual time pass, as fast as the run can: every party's deadlines inside it
    /// fire at their own instant, and time nobody uses is skipped.
    Advance(
        #[serde(with = "humantime_serde")]
        #[schemars(with = "String")]
        Duration,
    ),
    /// The same as `advance` (both let virtual time pass; kept for readability and older files).
    Wait(
        #[serde(with = "humantime_serde")]
        #[schemars(with = "String")]
        Duration,
    ),
    /// Start a fault now (see the catalogue; `duration` ends it by itself), on every hub or on
    /// the one `hub` names.
    Fault(FaultStep),
    /// Kill a device process (SIGKILL): no DISCONNECT, no FIN from the app.
    Crash(DeviceRef),
    /// Start a crashed or stopped device process again.
    Restart(DeviceRef),
    /// Stop a device gracefully (SIGTERM for processes).
    Stop(DeviceRef),
    /// Send a cloud-to-device message (queued while the device is offline).
    C2d(C2dStep),
    /// Patch the device's desired properties.
    Desired(DesiredStep),
    /// Invoke a direct method and wait for its answer; the outcome is an event in the log.
    Method(MethodStep),
}

impl Step {
    pub fn describe(&self) -> String {
        match self {
            Step::Advance(d) => format!("advance {}", humantime::format_duration(*d)),
            Step::Wait(d) => format!("wait {}", humantime::format_duration(*d)),
            Step::Fault(f) => match &f.hub {
                Some(h) => format!("fault {} on {h}", f.fault.kind.name()),
                None => format!("fault {}", f.fault.kind.name()),
            },
            Step::Crash(d) => format!("crash {}", d.device),
            Step::Restart(d) => format!("restart {}", d.device),
            Step::Stop(d) => format!("stop {}", d.device),
            Step::C2d(c) => format!("c2d to {}", c.device),
            Step::Desired(d) => format!("desired patch for {}", d.device),
            Step::Method(m) => format!("method {} on {}", m.name, m.device),
        }
    }
}

/// Read, parse and check a scenario file.
pub fn load(path: &Path) -> Result<Scenario, InputError> {
    parse(path, &crate::input::read_text(path)?)
}

/// Parse and check scenario text that came from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Scenario, InputError> {
    let scenario: Scenario = crate::input::parse_yaml(path, text)?;
    let checked = check(&scenario).and_then(|()| {
        let value: serde_norway::Value =
            serde_norway::from_str(text).map_err(|e| ("".to_owned(), e.to_string()))?;
        limits::check_durations(&value)
    });
    checked.map_err(|(what, message)| {
        let (line, column) = locate(text, &what);
        InputError::Syntax {
            path: path.to_owned(),
            line,
            column,
            message,
        }
    })?;
    Ok(scenario)
}

/// The line and column of the first occurrence of `needle` as a whole word (1-based), or 1:1.
fn locate(text: &str, needle: &str) -> (usize, usize) {
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let mut from = 0;
        while let Some(pos) = line[from..].find(needle) {
            let at = from + pos;
            let before = line[..at].chars().next_back();
            let after = line[at + needle.len()..].chars().next();
            let word =
                |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_');
            if !word(before) && !word(after) {
                return (i + 1, at + 1);
            }
            from = at + needle.len();
        }
    }
    (1, 1)
}

/// Whether a fault acts on the provisioning service.
fn is_dps_fault(kind: &FaultKind) -> bool {
    matches!(
        kind,
        FaultKind::DpsThrottle(_)
            | FaultKind::DpsError(_)
            | FaultKind::DpsAssigning(_)
            | FaultKind::DpsDrop(_)
            | FaultKind::DpsDisabled(_)
            | FaultKind::HubDown(_)
    )
}

/// Checks of `hubs` and `dps`: the hub names.
fn check_hubs(s: &Scenario) -> Result<Vec<String>, (String, String)> {
    if s.hubs.is_empty() {
        let name = s
            .hub
            .host_name
            .clone()
            .unwrap_or_else(|| "fakehub.azure-devices.net".to_owned());
        return Ok(vec![name]);
    }
    if !s.hub.is_default() {
        return Err((
            "hubs".into(),
            "give either `hub` or `hubs`, not both".into(),
        ));
    }
    let mut names: Vec<String> = Vec::new();
    for h in &s.hubs {
        let Some(name) = &h.host_name else {
            return Err((
                "hubs".into(),
                "every hub of `hubs` needs its `host_name`".into(),
            ));
        };
        if names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return Err((name.clone(), format!("hub `{name}` is defined twice")));
        }
        if h.speed.is_some() {
            return Err((
                "speed".into(),
                "`speed` is no longer needed (remove the line)".into(),
            ));
        }
        names.push(name.clone());
    }
    Ok(names)
}

/// Checks of the provisioning service and of the devices that provision.
fn check_dps(s: &Scenario, hub_names: &[String]) -> Result<(), (String, String)> {
    let Some(dps) = &s.dps else {
        if let Some(d) = s.devices.iter().find(|d| d.provision.is_some()) {
            return Err((
                "provision".into(),
                format!(
                    "device `{}` provisions, but the scenario has no `dps:`",
                    d.id
                ),
            ));
        }
        return Ok(());
    };
    if let fakehub::dps::Allocation::Static { hub } = &dps.allocation {
        if !hub_names.iter().any(|n| n.eq_ignore_ascii_case(hub)) {
            return Err((
                hub.clone(),
                format!("static allocation to an unknown hub `{hub}` (hubs: {hub_names:?})"),
            ));
        }
    }
    if let Err(e) = fakehub::dps::Enrollments::new(&dps.individual, &dps.groups) {
        return Err(("dps".into(), e.to_string()));
    }
    for d in &s.devices {
        match &d.provision {
            Some(Provision::Group(g)) => {
                let group = dps.groups.iter().find(|x| &x.name == g);
                match group {
                    None => {
                        return Err((g.clone(), format!("device `{}`: no enrollment group `{g}`", d.id)))
                    }
                    Some(x) if x.x509 => {
                        return Err((g.clone(), format!("device `{}`: `{g}` is an X.509 group; the sample device provisions with symmetric keys", d.id)))
                    }
                    Some(_) => {}
                }
            }
            Some(Provision::Individual) => {
                for id in d.ids() {
                    if dps
                        .individual
                        .iter()
                        .any(|e| e.registration_id == id && e.x509)
                    {
                        return Err((id.clone(), format!("device `{id}`: its individual enrollment is X.509; the sample device provisions with symmetric keys")));
                    }
                }
            }
            None => {}
        }
    }
    Ok(())
}

/// Semantic checks: on failure, the text to locate and the message.
fn check(s: &Scenario) -> Result<(), (String, String)> {
    if s.devices.is_empty() {
        return Err(("devices".into(), "the scenario has no devices".into()));
    }
    limits::check(s)?;
    let hub_names = check_hubs(s)?;
    check_dps(s, &hub_names)?;
    let mut ids = BTreeSet::new();
    let mut processes = BTreeSet::new();
    for d in &s.devices {
        if d.id.is_empty() || d.id.contains(['/', '+', '#']) {
            return Err((
                d.id.clone(),
                format!("`{}` is not a device id (no /, +, #)", d.id),
            ));
        }
        if d.count == Some(0) {
            return Err((
                d.id.clone(),
                format!("device `{}`: a fleet needs a count of at least 1", d.id),
            ));
        }
        for id in d.ids() {
            if !ids.insert(id.clone()) {
                return Err((d.id.clone(), format!("device `{id}` is defined twice")));
            }
            if d.run.is_some() {
                processes.insert(id);
            }
        }
        if let Some(run) = &d.run {
            if run.is_empty() || run[0].trim().is_empty() {
                return Err((
                    "run".into(),
                    format!("device `{}`: `run` needs a command", d.id),
                ));
            }
            if !d.bugs.is_empty() {
                return Err(("bugs".into(), format!("device `{}`: `bugs` are for the in-process sample device; pass `--bug` in `run` instead", d.id)));
            }
        } else if !d.env.is_empty() || d.clock.is_some() {
            let key = if d.env.is_empty() { "clock" } else { "env" };
            return Err((
                key.into(),
                format!("device `{}`: `{key}` is for a device process (`run`)", d.id),
            ));
        }
        if d.x509.is_some() && d.provision.is_some() {
            return Err((
                "x509".into(),
                format!("device `{}`: an X.509 device is registered in the hub, not provisioned (the sample device provisions with symmetric keys)", d.id),
            ));
        }
        for b in &d.bugs {
            if let Err(e) = b.parse::<sample_device::Bug>() {
                return Err((b.clone(), format!("device `{}`: {e}", d.id)));
            }
        }
    }
    let known = |dev: &str| -> Result<(), (String, String)> {
        if ids.contains(dev) {
            Ok(())
        } else {
            let list: Vec<&String> = ids.iter().take(10).collect();
            Err((
                dev.to_owned(),
                format!("no device `{dev}` (devices: {list:?})"),
            ))
        }
    };
    for step in &s.timeline {
        match step {
            Step::Crash(r) | Step::Restart(r) => {
                known(&r.device)?;
                if !processes.contains(&r.device) {
                    return Err((
                        r.device.clone(),
                        format!(
                            "`{}` runs in-process: only `run` devices can crash and restart",
                            r.device
                        ),
                    ));
                }
            }
            Step::Stop(r) => known(&r.device)?,
            Step::C2d(c) => known(&c.device)?,
            Step::Desired(d) => {
                known(&d.device)?;
                if !d.patch.is_object() {
                    return Err((
                        "patch".into(),
                        format!("the desired patch for `{}` must be an object", d.device),
                    ));
                }
            }
            Step::Method(m) => known(&m.device)?,
            Step::Fault(step) => {
                let f = &step.fault;
                if let Some(h) = &step.hub {
                    if !hub_names.iter().any(|n| n.eq_ignore_ascii_case(h)) {
                        return Err((h.clone(), format!("no hub `{h}` (hubs: {hub_names:?})")));
                    }
                }
                if is_dps_fault(&f.kind) && s.dps.is_none() {
                    return Err((
                        f.kind.name().to_owned(),
                        format!("`{}` needs a provisioning service (`dps:`)", f.kind.name()),
                    ));
                }
                if let Selector::Ids(list) = &f.devices {
                    for d in list {
                        known(d.split('/').next().unwrap_or(d))?;
                    }
                }
                if let Selector::Percent(p) = f.devices {
                    if p > 100 {
                        return Err(("percent".into(), format!("{p} is not a percentage")));
                    }
                }
            }
            Step::Advance(_) | Step::Wait(_) => {}
        }
    }
    if s.hub.speed.is_some() {
        return Err((
            "speed".into(),
            "`speed` is no longer needed: a run skips the time every party spends idle, so \
             `advance` and `wait` take as long as the devices are busy (remove the line)"
                .into(),
        ));
    }
    for d in &s.devices {
        if let Some(
            old @ (ClockAdapter::ClockFile | ClockAdapter::Faketime | ClockAdapter::Python),
        ) = d.clock
        {
            let name = match old {
                ClockAdapter::ClockFile => "clock_file",
                ClockAdapter::Faketime => "faketime",
                _ => "python",
            };
            return Err((
                name.into(),
                format!(
                    "device `{}`: `clock: {name}` was replaced by `clock: hub`, the default (the \
                     time preload makes any process follow the hub's clock; remove the line)",
                    d.id
                ),
            ));
        }
        if d.clock.is_some() && d.run.is_none() {
            return Err((
                "clock".into(),
                format!(
                    "device `{}`: `clock` is for `run` devices (in-process devices share the hub's clock)",
                    d.id
                ),
            ));
        }
    }
    for e in &s.expect {
        let device = e.device().map(str::to_owned);
        if let Some(d) = device {
            known(&d)?;
        }
    }
    Ok(())
}

mod limits;
pub use limits::{MAX_VIRTUAL_TIME, MIN_KEEPALIVE_CAP};

/// The JSON Schema of the scenario format.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Scenario)).unwrap_or_default()
}

/// Where the outputs of scenario `s` go.
pub fn out_dir(base: &Path, s: &Scenario, several: bool) -> PathBuf {
    if several {
        base.join(&s.name)
    } else {
        base.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_whole_words_and_skips_comments() {
        let text = "# sensor-1 in a comment\ndevices:\n  - id: sensor-10\n  - id: sensor-1\n";
        assert_eq!(locate(text, "sensor-1"), (4, 9));
        assert_eq!(locate(text, "nowhere"), (1, 1));
    }
}
