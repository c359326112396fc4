//! Running a scenario: start the hub and the devices, play the timeline in virtual time, judge the
//! expectations, and write the outputs.
//!
//! Each run gets its own runtime, chosen by how its devices keep time (its [`Regime`]):
//!
//! * **Simulated** — only in-process devices. A paused single-threaded runtime is a discrete-event
//!   simulator: time moves only when every task is idle, straight to the next deadline. Devices
//!   connect in memory. A run is as fast as its events and repeats exactly for the same seed.
//! * **Processes** — device processes on the hub's clock (the time preload). Time flows at real
//!   speed while anything is busy; whenever every thread of the hub and of the device processes
//!   sleeps, the time driver skips to the earliest deadline any of them waits for.
//! * **Real time** — a device keeps real time (`clock: real`): nothing is skipped.
//!
//! In every regime `advance` and `wait` simply let virtual time pass.

use crate::tell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fakehub::dps::IndividualEnrollment;
use fakehub::events::{ClockMode, Subject};
use fakehub::process_time::{ProcessTime, ThreadSet};
use fakehub::tls::DeviceCertificate;
use fakehub::transport::MemoryRoutes;
use fakehub::{Dps, EventKind, EventLog, Hub, HubHandle, VirtualClock, X509Auth};
use fakehub_assert::{Log, Verdict};
use sample_device::{ClientCertificate, DeviceOptions, InProcess, Provisioning};
use tokio::process::Command;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::report::Drawing;
use crate::scenario::{
    ClockAdapter, DeviceSpec, HubSettings, Provision, Scenario, Step, X509Device,
};
use crate::service_steps::Applied;

/// How a run went.
pub struct Outcome {
    pub verdicts: Vec<(String, Verdict)>,
    /// The log the verdicts were judged on (the report draws the same one: no second reading of
    /// events.jsonl, and the picture matches the verdicts).
    pub log: Log,
    pub interrupted: bool,
    pub regime: Regime,
    /// The virtual time the run took, from the hub's start to its end.
    pub virtual_time: Duration,
    /// What the report draws from the log, when [`RunOptions::draw`] asked for it: made on a
    /// second thread while the verdicts are judged.
    pub drawing: Option<Drawing>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        !self.interrupted && self.verdicts.iter().all(|(_, v)| v.passed)
    }

    /// Some verdict failed (a rule was judged and broken).
    pub fn failed(&self) -> bool {
        self.failures().next().is_some()
    }

    /// The verdicts that failed (judged and broken), with their expectations' YAML entries.
    pub fn failures(&self) -> impl Iterator<Item = &(String, Verdict)> {
        self.verdicts.iter().filter(|(_, v)| v.judged && !v.passed)
    }

    /// `INTERRUPTED`, `FAIL`, `PASS`, or `CANNOT JUDGE` (nothing failed, but some rule could not
    /// be judged).
    pub fn mark(&self) -> &'static str {
        if self.interrupted {
            "INTERRUPTED"
        } else if self.failed() {
            "FAIL"
        } else if self.passed() {
            "PASS"
        } else {
            "CANNOT JUDGE"
        }
    }
}

/// Run options from the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub seed: Option<u64>,
    /// Bugs added to every sample device, in-process or process (to show a scenario catching them).
    pub sample_bugs: Vec<String>,
    /// Also draw the report's timeline (see [`Outcome::drawing`]).
    pub draw: bool,
}

/// How virtual time passes in a run (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Regime {
    Simulated,
    Processes,
    RealTime,
}

impl Regime {
    /// The regime a scenario's devices call for.
    pub fn of(s: &Scenario) -> Regime {
        let processes: Vec<&DeviceSpec> = s.devices.iter().filter(|d| d.run.is_some()).collect();
        if processes
            .iter()
            .any(|d| d.clock.unwrap_or_default() == ClockAdapter::Real)
        {
            Regime::RealTime
        } else if processes.is_empty() {
            Regime::Simulated
        } else {
            Regime::Processes
        }
    }

    /// How every device of a run in this regime keeps time (one clock per run: in real time the
    /// in-process devices keep real time too).
    pub fn clock(self) -> ClockMode {
        match self {
            Regime::Simulated => ClockMode::Simulated,
            Regime::Processes => ClockMode::Hub,
            Regime::RealTime => ClockMode::Real,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Regime::Simulated => "simulated (in-process devices, discrete-event time)",
            Regime::Processes => "device processes on the hub's clock (idle time skipped)",
            Regime::RealTime => "real time (a device keeps its own clock)",
        }
    }
}

/// How long (virtual time) every device gets to connect once before the timeline starts.
const CONNECT_LIMIT: Duration = Duration::from_secs(60);
/// …and at least this much real time when devices are processes.
const CONNECT_LIMIT_REAL: Duration = Duration::from_secs(30);

/// How a run is carried out, besides its scenario and options.
#[derive(Debug, Clone, Default)]
pub struct Execution<'a> {
    /// Where the hub, the time driver and device processes write their files (ca.pem,
    /// events.jsonl, connections.jsonl, devices/, clock). `None`: nothing is written, which only
    /// runs whose devices are all in-process can do.
    pub out: Option<&'a Path>,
    /// Print what happens (each step, the service side's errors, the time driver's figures) on
    /// stderr.
    pub narrate: bool,
    /// Stops the run when cancelled (what was seen is still judged). `None`: SIGINT, SIGTERM and
    /// SIGHUP do.
    pub stop: Option<CancellationToken>,
}

/// Run one scenario, writing into `out`, on a runtime of its own, telling what happens on stderr.
/// SIGINT, SIGTERM and SIGHUP stop it (what was seen is still judged and written; the outcome says
/// it was interrupted).
pub fn run(scenario: &Scenario, out: &Path, opts: &RunOptions) -> anyhow::Result<Outcome> {
    execute(
        scenario,
        opts,
        &Execution {
            out: Some(out),
            narrate: true,
            stop: None,
        },
    )
}

/// Run one scenario on a runtime of its own, the way `how` says: what `fakehub run` does, and
/// what exploring does many times over without writing or saying anything.
pub fn execute(
    scenario: &Scenario,
    opts: &RunOptions,
    how: &Execution<'_>,
) -> anyhow::Result<Outcome> {
    let regime = Regime::of(scenario);
    if how.out.is_none() && regime != Regime::Simulated {
        anyhow::bail!(
            "scenario '{}': device processes need a directory for the CA file and their logs",
            scenario.name
        );
    }
    let threads = ThreadSet::default();
    let runtime = match regime {
        Regime::Simulated => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()?,
        Regime::Processes | Regime::RealTime => {
            let t = threads.clone();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("fakehub-run")
                .enable_all()
                .on_thread_start(move || t.register_current())
                .build()?
        }
    };
    // The thread that drives the run's top-level future is one of the hub's too.
    threads.register_current();
    let outcome = runtime.block_on(run_in(regime, scenario, opts, how, threads));
    runtime.shutdown_timeout(Duration::from_secs(2));
    outcome
}

fn progress(hub: &HubHandle, what: &str) {
    let at = hub.clock().elapsed();
    tell!("[{}] {what}", fakehub_assert::log::fmt_offset(at));
}

/// SIGINT, SIGTERM or SIGHUP cancel `stop`.
fn stop_on_signals(stop: CancellationToken) {
    tokio::spawn(async move {
        fakehub::shutdown_signal().await;
        stop.cancel();
    });
}

async fn run_in(
    regime: Regime,
    scenario: &Scenario,
    opts: &RunOptions,
    how: &Execution<'_>,
    threads: ThreadSet,
) -> anyhow::Result<Outcome> {
    let stop = match &how.stop {
        Some(s) => s.clone(),
        None => {
            let s = CancellationToken::new();
            stop_on_signals(s.clone());
            s
        }
    };
    let seed = opts.seed.or(scenario.seed).unwrap_or(0);
    let dps = start_dps(scenario, seed)?;
    let self_signed = self_signed_certificates(scenario)?;
    let hubs = start_hubs(scenario, regime, seed, how.out, dps.as_ref(), &self_signed).await?;
    let hub = hubs[0].clone();
    let certificates = device_certificates(scenario, &hub, self_signed)?;
    // Only device processes need the directory (checked in `execute`).
    let out = how.out.map(Path::to_owned).unwrap_or_default();
    let time = match regime {
        Regime::Processes => Some(ProcessTime::start(
            hub.clock(),
            &out.join("clock"),
            threads,
        )?),
        Regime::Simulated | Regime::RealTime => None,
    };
    if how.narrate {
        tell!(
            "fakehub: scenario '{}' — hub on {}, {}; output in {}",
            scenario.name,
            hub.local_addr(),
            regime.describe(),
            out.display()
        );
        if let Some(d) = &scenario.description {
            tell!("  {}", d.trim());
        }
    }
    let routes = MemoryRoutes::default();
    for h in &hubs {
        routes.insert(h.device_host(), h.memory_connector());
    }
    let mut rig = Rig {
        hub: hub.clone(),
        hubs: hubs.clone(),
        dps,
        routes,
        certificates,
        out,
        devices: BTreeMap::new(),
        regime,
        time,
        sample_bugs: opts.sample_bugs.clone(),
        narrate: how.narrate,
    };
    for (i, spec) in scenario.devices.iter().enumerate() {
        for (j, id) in spec.ids().into_iter().enumerate() {
            let device_seed = seed.wrapping_add(u64::try_from(i * 10_000 + j).unwrap_or(0));
            rig.start_device(spec, &id, device_seed, opts)?;
        }
    }
    let missing = tokio::select! {
        biased;
        m = rig.wait_connected(CONNECT_LIMIT) => m,
        _ = stop.cancelled() => Vec::new(),
    };
    if !missing.is_empty() {
        rig.stop_all().await;
        drop(rig);
        let detail = missing.join("\n  ");
        anyhow::bail!(
            "these devices never connected within {} of virtual time (and, for device processes, {} of real time):\n  {detail}",
            humantime::format_duration(CONNECT_LIMIT),
            humantime::format_duration(CONNECT_LIMIT_REAL)
        );
    }

    let mut interrupted = stop.is_cancelled();
    for step in &scenario.timeline {
        if interrupted {
            break;
        }
        rig.say(&step.describe());
        tokio::select! {
            biased;
            r = rig.step(step) => r?,
            _ = stop.cancelled() => {}
        }
        interrupted = stop.is_cancelled();
    }
    if interrupted && how.narrate {
        tell!("fakehub: interrupted; stopping the devices and writing what was seen");
    }
    rig.say("stopping the devices");
    hub.events()
        .emit(&Subject::default(), EventKind::TimelineEnded);
    // What the timeline made is read back from events.jsonl while the devices stop (a fleet's
    // millions of events are most of the run's end).
    let ahead = hub.events().read_ahead();
    rig.stop_all().await;
    let log = Log::new(ahead.finish());
    let devices: Vec<String> = scenario.devices.iter().flat_map(|d| d.ids()).collect();
    let judge = || -> Vec<(String, Verdict)> {
        scenario
            .expect
            .iter()
            .flat_map(|e| {
                let text = describe_expectation(e);
                e.evaluate_for(&log, &devices)
                    .into_iter()
                    .map(move |v| (text.clone(), v))
            })
            .collect()
    };
    let (verdicts, drawing) = if opts.draw {
        std::thread::scope(|scope| {
            let drawing = scope.spawn(|| Drawing::of(&log));
            let verdicts = judge();
            // A panic while drawing is this thread's (the same code run in line).
            match drawing.join() {
                Ok(d) => (verdicts, Some(d)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    } else {
        (judge(), None)
    };
    if let Some(time) = rig.time.take() {
        let r = time.stop();
        if how.narrate {
            tell!(
            "fakehub: the time driver skipped {} of idle time in {} skips and sent {} wake signals ({} busy looks, {:?} looking)",
            humantime::format_duration(Duration::from_millis(
                u64::try_from(r.skipped.as_millis()).unwrap_or(u64::MAX)
            )),
            r.skips,
            r.wakes,
            r.busy_looks,
            r.looking
        );
        }
    }
    let virtual_time = hub.clock().elapsed();
    drop(rig);
    drop(hub);
    // The others first: the first hub writes the log's files.
    for h in hubs.into_iter().rev() {
        match Arc::try_unwrap(h) {
            Ok(h) => h.shutdown().await?,
            Err(_) => anyhow::bail!("a hub is still in use at the end of the run"),
        }
    }
    Ok(Outcome {
        drawing,
        verdicts,
        log,
        interrupted,
        regime,
        virtual_time,
    })
}

/// A self-signed certificate for each `x509: self_signed` device (registered by its thumbprint
/// when the hub is built).
fn self_signed_certificates(
    scenario: &Scenario,
) -> anyhow::Result<BTreeMap<String, DeviceCertificate>> {
    let mut out = BTreeMap::new();
    for d in scenario
        .devices
        .iter()
        .filter(|d| d.x509 == Some(X509Device::SelfSigned))
    {
        for id in d.ids() {
            let cert = DeviceCertificate::self_signed(&id)?;
            out.insert(id, cert);
        }
    }
    Ok(out)
}

/// The certificates of the run's X.509 devices: the self-signed ones, and one issued by the hub's
/// CA (CN = the id) for each `x509: ca` device.
fn device_certificates(
    scenario: &Scenario,
    hub: &HubHandle,
    mut certificates: BTreeMap<String, DeviceCertificate>,
) -> anyhow::Result<BTreeMap<String, DeviceCertificate>> {
    for d in scenario
        .devices
        .iter()
        .filter(|d| d.x509 == Some(X509Device::Ca))
    {
        for id in d.ids() {
            let cert = hub.certificates().issue_device_certificate(&id)?;
            certificates.insert(id, cert);
        }
    }
    Ok(certificates)
}

/// A device connection string for a certificate: the key replaced by `x509=true`.
fn x509_connection_string(conn: &str) -> String {
    let mut parts: Vec<&str> = conn
        .split(';')
        .filter(|p| !p.is_empty() && !p.starts_with("SharedAccessKey="))
        .collect();
    parts.push("x509=true");
    parts.join(";")
}

/// The provisioning service of the run, with an individual enrollment (generated key) for each
/// device that provisions individually and is not enrolled already.
fn start_dps(scenario: &Scenario, seed: u64) -> anyhow::Result<Option<Dps>> {
    let Some(config) = &scenario.dps else {
        return Ok(None);
    };
    let mut config = config.clone();
    for d in &scenario.devices {
        if d.provision != Some(Provision::Individual) {
            continue;
        }
        for id in d.ids() {
            if !config.individual.iter().any(|e| e.registration_id == id) {
                config.individual.push(IndividualEnrollment {
                    registration_id: id,
                    primary_key: None,
                    secondary_key: None,
                    x509: false,
                    enabled: true,
                });
            }
        }
    }
    Ok(Some(Dps::new(&config, seed)?))
}

/// Start the run's hubs: the first writes the outputs; with `hubs:`, all share one event log
/// (each event tagged with its hub), one clock and one CA; with a provisioning service, each
/// serves it and is linked to it. Devices that do not provision are registered in the first.
async fn start_hubs(
    scenario: &Scenario,
    regime: Regime,
    seed: u64,
    out: Option<&Path>,
    dps: Option<&Dps>,
    self_signed: &BTreeMap<String, DeviceCertificate>,
) -> anyhow::Result<Vec<Arc<HubHandle>>> {
    let settings = scenario.hub_settings();
    let shared_log = (!scenario.hubs.is_empty()).then(|| EventLog::new(VirtualClock::new()));
    let mut hubs: Vec<Arc<HubHandle>> = Vec::new();
    for (i, spec) in settings.iter().enumerate() {
        let mut builder = hub_builder(spec, regime).seed(seed);
        if let Some(log) = &shared_log {
            builder = builder.event_log(log.clone());
        }
        if let Some(dps) = dps {
            builder = builder.dps(dps.clone());
        }
        match hubs.first() {
            None => {
                if let Some(out) = out {
                    std::fs::create_dir_all(out.join("devices"))?;
                    builder = builder.out_dir(out);
                }
                for d in scenario.devices.iter().filter(|d| d.provision.is_none()) {
                    for id in d.ids() {
                        let who = fakehub::IdentityRef::device(id.clone());
                        builder = builder.device(id.clone());
                        builder = match (d.x509, self_signed.get(&id)) {
                            (Some(X509Device::Ca), _) => {
                                builder.x509(&who, X509Auth::CertificateAuthority)
                            }
                            (Some(X509Device::SelfSigned), Some(c)) => builder.x509(
                                &who,
                                X509Auth::SelfSigned {
                                    primary: c.thumbprints.sha256.clone(),
                                    secondary: None,
                                },
                            ),
                            _ => builder,
                        };
                    }
                }
            }
            Some(first) => {
                let host = spec.host_name.clone().unwrap_or_default();
                let certs = first.certificates().sibling(&host)?;
                builder = builder.certificates(certs);
            }
        }
        let hub = builder
            .build()?
            .start()
            .await
            .map_err(|e| anyhow::anyhow!("hub {}: {e}", i + 1))?;
        hubs.push(Arc::new(hub));
    }
    Ok(hubs)
}

fn hub_builder(spec: &HubSettings, regime: Regime) -> fakehub::HubBuilder {
    let mut builder = Hub::builder();
    if let Some(h) = &spec.host_name {
        builder = builder.host_name(h.clone());
    }
    builder = match (spec.listen, regime) {
        (Some(l), _) => builder.listen(l),
        // Real SDKs only connect to port 8883: each hub gets a loopback address of its own.
        (None, Regime::Processes | Regime::RealTime) => builder.listen_loopback(8883),
        (None, Regime::Simulated) => builder,
    };
    if let Some(g) = spec.token_grace {
        builder = builder.token_grace(g);
    }
    if let Some(c) = spec.keepalive_cap {
        builder = builder.keepalive_cap(c);
    }
    if let Some(tls) = spec.memory_tls {
        builder = builder.memory_tls(tls);
    }
    builder
}

/// An expectation as its YAML entry.
pub fn describe_expectation(e: &fakehub_assert::Expectation) -> String {
    let v = serde_json::to_value(e).unwrap_or_default();
    match v.as_object().and_then(|o| o.iter().next()) {
        Some((k, body)) => {
            let fields: Vec<String> = body
                .as_object()
                .map(|o| {
                    o.iter()
                        // Left out: unset options and switches left off.
                        .filter(|(_, v)| !v.is_null() && **v != serde_json::Value::Bool(false))
                        .map(|(k, v)| {
                            format!(
                                "{k}: {}",
                                v.as_str()
                                    .map(str::to_owned)
                                    .unwrap_or_else(|| v.to_string())
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!("{k}: {{ {} }}", fields.join(", "))
        }
        None => v.to_string(),
    }
}

/// A device process and what the runner knows of it.
struct ProcessDevice {
    spec: Box<DeviceSpec>,
    /// The running process, if any.
    running: Option<Running>,
}

/// A started process: its id (and process group), what the runner is doing to it, and a receiver
/// that turns true when it has exited (and its exit is recorded).
struct Running {
    pid: i32,
    /// Set by the runner before it kills or stops the process: how the exit is recorded.
    ending: Arc<Mutex<Option<&'static str>>>,
    exited: watch::Receiver<bool>,
}

enum Device {
    InProcess(InProcess),
    Process(ProcessDevice),
}

struct Rig {
    /// The first hub (it serves the provisioning service devices are given, and writes the files).
    hub: Arc<HubHandle>,
    hubs: Vec<Arc<HubHandle>>,
    dps: Option<Dps>,
    /// Each hub's device host to its in-memory connector (in-process devices that provision).
    routes: MemoryRoutes,
    /// The X.509 devices' certificates (their keys are secrets: never printed).
    certificates: BTreeMap<String, DeviceCertificate>,
    out: PathBuf,
    devices: BTreeMap<String, Device>,
    regime: Regime,
    time: Option<ProcessTime>,
    /// `--sample-bug`s, also given to bundled sample-device processes.
    sample_bugs: Vec<String>,
    /// Tell what happens on stderr.
    narrate: bool,
}

fn device_subject(id: &str) -> Subject {
    Subject {
        conn: None,
        device: Some(id.into()),
        module: None,
    }
}

impl Rig {
    /// A line of progress, stamped with the virtual time (when the run narrates).
    fn say(&self, what: &str) {
        if self.narrate {
            progress(&self.hub, what);
        }
    }

    fn start_device(
        &mut self,
        spec: &DeviceSpec,
        id: &str,
        seed: u64,
        opts: &RunOptions,
    ) -> anyhow::Result<()> {
        self.hub.events().emit(
            &device_subject(id),
            EventKind::DeviceClock {
                mode: self.regime.clock(),
            },
        );
        if spec.run.is_some() {
            let running = self.spawn_process(spec, id)?;
            let device = ProcessDevice {
                spec: Box::new(spec.clone()),
                running: Some(running),
            };
            self.devices.insert(id.to_owned(), Device::Process(device));
            return Ok(());
        }
        let mut bugs = Vec::new();
        for b in spec.bugs.iter().chain(&opts.sample_bugs) {
            bugs.push(
                b.parse::<sample_device::Bug>()
                    .map_err(anyhow::Error::msg)?,
            );
        }
        let mut dopts = DeviceOptions {
            bugs: bugs.into_iter().collect(),
            seed,
            ..Default::default()
        };
        if let Some(t) = spec.telemetry_interval {
            dopts.telemetry_interval = t;
        }
        if let Some(k) = spec.keep_alive {
            dopts.keep_alive = k;
        }
        dopts.certificate = self.certificates.get(id).map(|c| ClientCertificate {
            cert_pem: c.cert_pem.clone(),
            key_pem: c.key_pem.clone(),
        });
        let device = match self.provisioning(spec, id)? {
            Some(p) => InProcess::provisioned(self.hub.as_ref(), self.routes.clone(), p, dopts)?,
            None => InProcess::spawn(self.hub.as_ref(), id, dopts)?,
        };
        self.devices
            .insert(id.to_owned(), Device::InProcess(device));
        Ok(())
    }

    /// Where and as whom a device that provisions registers: the first hub's listener, the
    /// service's scope, and its key (individual, or derived from its group's).
    fn provisioning(&self, spec: &DeviceSpec, id: &str) -> anyhow::Result<Option<Provisioning>> {
        let (Some(how), Some(dps)) = (&spec.provision, &self.dps) else {
            return Ok(None);
        };
        let group = match how {
            Provision::Individual => None,
            Provision::Group(g) => Some(g.as_str()),
        };
        let key = dps
            .device_key(id, group)
            .ok_or_else(|| anyhow::anyhow!("device `{id}`: no enrollment key to provision with"))?;
        Ok(Some(Provisioning {
            host: self.hub.device_host().to_owned(),
            port: self.hub.local_addr().port(),
            id_scope: dps.id_scope().to_owned(),
            registration_id: id.to_owned(),
            key,
        }))
    }

    /// Start a device process in a process group of its own (so the whole group can be stopped),
    /// killed with the runner if the runner dies, with the hub's connection string, CA and clock.
    fn spawn_process(&self, spec: &DeviceSpec, id: &str) -> anyhow::Result<Running> {
        let run = spec.run.as_deref().unwrap_or_default();
        let Some((first, rest)) = run.split_first() else {
            anyhow::bail!("device `{id}`: `run` needs a command");
        };
        let (program, args): (PathBuf, Vec<String>) = if first == "sample-device" {
            // The bundled sample device: this very binary's `sample-device` subcommand.
            let mut args = vec!["sample-device".to_owned()];
            args.extend(rest.iter().cloned());
            for b in &self.sample_bugs {
                args.extend(["--bug".to_owned(), b.clone()]);
            }
            (std::env::current_exe()?, args)
        } else {
            (PathBuf::from(first), rest.to_vec())
        };
        let ca = self.out.join("ca.pem");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.out.join("devices").join(format!("{id}.log")))?;
        let mut cmd = Command::new(&program);
        // The scenario's variables first: the hub's own come after them.
        cmd.envs(&spec.env);
        match self.provisioning(spec, id)? {
            Some(p) => {
                let host = match p.port {
                    8883 => p.host,
                    port => format!("{}:{port}", p.host),
                };
                cmd.env("FAKEHUB_DPS_HOST", host)
                    .env("FAKEHUB_DPS_ID_SCOPE", p.id_scope)
                    .env("FAKEHUB_DPS_REGISTRATION_ID", p.registration_id)
                    .env("FAKEHUB_DPS_KEY", p.key);
            }
            None => {
                let conn = self.hub.connection_string(id).unwrap_or_default();
                match self.certificates.get(id) {
                    None => {
                        cmd.env("FAKEHUB_CONNECTION_STRING", conn);
                    }
                    Some(c) => {
                        // The certificate and its key (0600) beside the device's log.
                        let dir = self.out.join("devices");
                        let (cert, key) =
                            (dir.join(format!("{id}.pem")), dir.join(format!("{id}.key")));
                        std::fs::write(&cert, &c.cert_pem)?;
                        crate::output::write_private(&key, &c.key_pem)?;
                        cmd.env("FAKEHUB_CONNECTION_STRING", x509_connection_string(&conn))
                            .env("FAKEHUB_CERT_FILE", &cert)
                            .env("FAKEHUB_KEY_FILE", &key);
                    }
                }
            }
        }
        cmd.args(&args)
            .env("FAKEHUB_CA_FILE", &ca)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        // The time driver skips nothing while the process is being started (this thread waits in
        // fork/exec, and the child is only counted once registered).
        let _hold = self.time.as_ref().map(ProcessTime::hold);
        if let Some(time) = &self.time {
            cmd.envs(time.env());
        }
        // The device dies with the runner, even if the runner is killed outright.
        // SAFETY: prctl is async-signal-safe; it only sets a flag of the child about to exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            anyhow::anyhow!("device `{id}`: cannot start {}: {e}", program.display())
        })?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| anyhow::anyhow!("device `{id}`: the process has no id"))?;
        if let Some(time) = &self.time {
            time.register(pid);
        }
        self.hub.events().emit(
            &device_subject(id),
            EventKind::DeviceProcess {
                action: "started".into(),
                code: None,
                signal: None,
            },
        );
        // Its exit is an event at the instant it happens, however it happens.
        let ending: Arc<Mutex<Option<&'static str>>> = Arc::new(Mutex::new(None));
        let (done, exited) = watch::channel(false);
        let (events, who, how) = (self.hub.events().clone(), id.to_owned(), ending.clone());
        tokio::spawn(async move {
            use std::os::unix::process::ExitStatusExt;
            let status = child.wait().await.ok();
            let action = how
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .unwrap_or("exited");
            events.emit(
                &device_subject(&who),
                EventKind::DeviceProcess {
                    action: action.to_owned(),
                    code: status.and_then(|s| s.code()),
                    signal: status.and_then(|s| s.signal()),
                },
            );
            done.send_replace(true);
        });
        Ok(Running {
            pid,
            ending,
            exited,
        })
    }

    /// Wait until every device has connected once; the ones that did not, with what they were given.
    async fn wait_connected(&self, limit: Duration) -> Vec<String> {
        let ids: BTreeSet<String> = self.devices.keys().cloned().collect();
        let mut seen = BTreeSet::new();
        let mut stream = self.hub.event_stream();
        let clock = self.hub.clock().clone();
        let all = async {
            while seen.len() < ids.len() {
                let e = stream.next().await;
                if let (EventKind::Connack { code: 0, .. }, Some(d)) = (&e.kind, &e.device) {
                    seen.insert(d.clone());
                }
            }
        };
        // A process's start-up is real work (an interpreter loading an SDK on a busy machine):
        // besides the virtual limit, it gets real time too.
        let real_floor = match self.regime {
            Regime::Simulated => Duration::ZERO,
            Regime::Processes | Regime::RealTime => CONNECT_LIMIT_REAL,
        };
        let limit = async {
            tokio::join!(clock.sleep(limit), tokio::time::sleep(real_floor));
        };
        tokio::select! {
            biased;
            _ = all => {}
            _ = limit => {}
        }
        ids.iter()
            .filter(|id| !seen.contains(id.as_str()))
            .map(|id| self.describe_device(id))
            .collect()
    }

    /// What a device was given, for an error that names it (never its key).
    fn describe_device(&self, id: &str) -> String {
        let gateway = self.hub.gateway_host();
        match self.devices.get(id) {
            Some(Device::Process(p)) => {
                let clock = match p.spec.clock.unwrap_or_default() {
                    ClockAdapter::Real => "real time",
                    _ => "the hub's clock (time preload)",
                };
                let exited = p.running.as_ref().is_none_or(|r| *r.exited.borrow());
                format!(
                    "`{id}`: process {:?} on {clock}, given GatewayHostName={gateway}, HostName={} and CA {}{} — see {}",
                    p.spec.run.as_deref().unwrap_or_default(),
                    self.hub.host_name(),
                    self.out.join("ca.pem").display(),
                    if exited { " (the process has exited)" } else { "" },
                    self.out.join("devices").join(format!("{id}.log")).display()
                )
            }
            Some(Device::InProcess(_)) if self.dps.is_some() => format!(
                "`{id}`: the in-process sample device (in memory, on the hub's clock; it provisions through {} when the scenario says `provision`)",
                self.hub.device_host()
            ),
            Some(Device::InProcess(_)) => {
                format!("`{id}`: the in-process sample device (in memory, on the hub's clock)")
            }
            None => format!("`{id}`"),
        }
    }

    async fn step(&mut self, step: &Step) -> anyhow::Result<()> {
        let clock = self.hub.clock().clone();
        match step {
            // Time passes; whoever is idle is skipped over (see the module documentation).
            Step::Advance(d) | Step::Wait(d) => clock.sleep(*d).await,
            Step::Crash(r) => self.end_process(&r.device, "crashed").await,
            // Service-side failures (device offline, queue full, method timeout) are the device's
            // weather: the hub's event log records them, and the run goes on.
            Step::Fault(_) | Step::C2d(_) | Step::Desired(_) | Step::Method(_) => {
                if let Some(applied) = crate::service_steps::apply(&self.hubs, step).await {
                    if matches!(applied, Applied::Method { .. } | Applied::Refused { .. }) {
                        self.say(&format!("  {}: {applied}", step.describe()));
                    }
                }
            }
            Step::Stop(r) => self.stop_device(&r.device).await,
            Step::Restart(r) => {
                let spec = match self.devices.get(&r.device) {
                    Some(Device::Process(p)) => {
                        if p.running.as_ref().is_some_and(|r| !*r.exited.borrow()) {
                            return Ok(());
                        }
                        (*p.spec).clone()
                    }
                    _ => anyhow::bail!("`{}` is not a device process", r.device),
                };
                let running = self.spawn_process(&spec, &r.device)?;
                if let Some(Device::Process(p)) = self.devices.get_mut(&r.device) {
                    p.running = Some(running);
                }
            }
        }
        Ok(())
    }

    /// Kill (`crashed`: SIGKILL, no DISCONNECT, the kernel closes its sockets) or stop (`stopped`:
    /// SIGTERM, then SIGKILL after 5 s) a device process's whole group, and wait for its exit to be
    /// recorded.
    async fn end_process(&mut self, id: &str, how: &'static str) {
        let Some(Device::Process(p)) = self.devices.get_mut(id) else {
            return;
        };
        let Some(running) = p.running.take() else {
            return;
        };
        let mut exited = running.exited.clone();
        if *exited.borrow() {
            return;
        }
        *running.ending.lock().unwrap_or_else(|e| e.into_inner()) = Some(how);
        let signal = if how == "crashed" {
            libc::SIGKILL
        } else {
            libc::SIGTERM
        };
        // SAFETY: kill(2) on the device's own process group; no memory is involved.
        unsafe {
            libc::kill(-running.pid, signal);
        }
        let gone = tokio::time::timeout(Duration::from_secs(5), exited.wait_for(|d| *d))
            .await
            .is_ok();
        if !gone {
            // SAFETY: as above.
            unsafe {
                libc::kill(-running.pid, libc::SIGKILL);
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), exited.wait_for(|d| *d)).await;
        }
    }

    async fn stop_device(&mut self, id: &str) {
        match self.devices.get(id) {
            Some(Device::InProcess(_)) => {
                if let Some(Device::InProcess(device)) = self.devices.remove(id) {
                    device.stop().await;
                }
            }
            Some(Device::Process(_)) => self.end_process(id, "stopped").await,
            None => {}
        }
    }

    async fn stop_all(&mut self) {
        let ids: Vec<String> = self.devices.keys().cloned().collect();
        // In-process devices stop together (each sends DISCONNECT), processes one by one.
        let mut in_process = tokio::task::JoinSet::new();
        for id in &ids {
            match self.devices.get(id) {
                Some(Device::InProcess(_)) => {
                    if let Some(Device::InProcess(device)) = self.devices.remove(id) {
                        in_process.spawn(device.stop());
                    }
                }
                Some(Device::Process(_)) => self.end_process(id, "stopped").await,
                None => {}
            }
        }
        in_process.join_all().await;
        self.devices.clear();
        // Let the hub see the last DISCONNECTs and closes.
        self.hub.clock().sleep(Duration::from_millis(200)).await;
    }
}
