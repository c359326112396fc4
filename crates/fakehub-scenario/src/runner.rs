//! Running a scenario: start the hub and the devices, play the timeline on the virtual clock, judge
//! the expectations, and write the outputs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use fakehub::clock_file::ClockFileWriter;
use fakehub::events::Subject;
use fakehub::{EventKind, Hub, HubHandle};
use fakehub_assert::{Log, Verdict};
use sample_device::{DeviceOptions, InProcess};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::scenario::{ClockAdapter, DeviceSpec, Scenario, Step};

/// How a run went.
pub struct Outcome {
    pub verdicts: Vec<(String, Verdict)>,
    pub interrupted: bool,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        !self.interrupted && self.verdicts.iter().all(|(_, v)| v.passed)
    }
}

/// Run options from the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub seed: Option<u64>,
    /// Bugs added to every in-process sample device (to show a scenario catching them).
    pub sample_bugs: Vec<String>,
}

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
/// Jumps are cut into steps this long when device processes must see time pass.
const PROCESS_STEP: Duration = Duration::from_secs(30);
/// Real time a device process gets to notice each step (its clock file is re-read every 10 ms).
const PROCESS_PAUSE: Duration = Duration::from_millis(30);

enum Running {
    InProcess(InProcess),
    Process {
        spec: Box<DeviceSpec>,
        child: Option<Child>,
    },
}

struct Rig {
    hub: Arc<HubHandle>,
    out: PathBuf,
    devices: HashMap<String, Running>,
    clock_file: Option<PathBuf>,
    faketime_file: Option<PathBuf>,
    _writer: Option<ClockFileWriter>,
    has_processes: bool,
    speed: f64,
    /// `--sample-bug`s, also given to bundled sample-device processes.
    sample_bugs: Vec<String>,
}

fn progress(hub: &HubHandle, start: std::time::SystemTime, what: &str) {
    let at = hub.clock().now().duration_since(start).unwrap_or_default();
    eprintln!("[{}] {what}", fakehub_assert::log::fmt_offset(at));
}

/// Run one scenario, writing into `out`.
pub async fn run(
    scenario: &Scenario,
    out: &Path,
    opts: &RunOptions,
    stop: CancellationToken,
) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(out.join("devices"))?;
    let seed = opts.seed.or(scenario.seed).unwrap_or(0);
    let mut builder = Hub::builder().seed(seed).out_dir(out);
    if let Some(h) = &scenario.hub.host_name {
        builder = builder.host_name(h.clone());
    }
    if let Some(l) = scenario.hub.listen {
        builder = builder.listen(l);
    }
    if let Some(g) = scenario.hub.token_grace {
        builder = builder.token_grace(g);
    }
    if let Some(c) = scenario.hub.keepalive_cap {
        builder = builder.keepalive_cap(c);
    }
    for d in &scenario.devices {
        for id in d.ids() {
            builder = builder.device(id);
        }
    }
    let hub = Arc::new(builder.build()?.start().await?);
    let start = hub.clock().now();
    let has_processes = scenario.devices.iter().any(|d| d.run.is_some());
    let (clock_file, faketime_file, writer) = if has_processes {
        let dir = out.join("clock");
        std::fs::create_dir_all(&dir)?;
        let (c, f) = (dir.join("clock.json"), dir.join("faketime"));
        let w = ClockFileWriter::start(hub.clock(), c.clone(), Some(f.clone()))?;
        (Some(c), Some(f), Some(w))
    } else {
        (None, None, None)
    };
    let mut rig = Rig {
        hub: hub.clone(),
        out: out.to_owned(),
        devices: HashMap::new(),
        clock_file,
        faketime_file,
        _writer: writer,
        has_processes,
        speed: scenario.hub.speed.unwrap_or(60.0),
        sample_bugs: opts.sample_bugs.clone(),
    };
    eprintln!(
        "fakehub: scenario '{}' — hub on {}, output in {}",
        scenario.name,
        hub.local_addr(),
        out.display()
    );
    if let Some(d) = &scenario.description {
        eprintln!("  {}", d.trim());
    }
    for (i, spec) in scenario.devices.iter().enumerate() {
        for (j, id) in spec.ids().into_iter().enumerate() {
            rig.start_device(spec, &id, seed.wrapping_add((i * 10_000 + j) as u64), opts)
                .await?;
        }
    }
    rig.wait_connected(Duration::from_secs(30)).await;

    let mut interrupted = false;
    for step in &scenario.timeline {
        progress(&hub, start, &step.describe());
        let done = tokio::select! {
            _ = stop.cancelled() => false,
            r = rig.step(step) => { r?; true }
        };
        if !done {
            eprintln!("fakehub: interrupted; writing what was seen");
            interrupted = true;
            break;
        }
    }
    progress(&hub, start, "stopping the devices");
    hub.events()
        .emit(&Subject::default(), EventKind::TimelineEnded);
    rig.stop_all().await;
    let log = Log::of(&hub);
    let verdicts: Vec<(String, Verdict)> = scenario
        .expect
        .iter()
        .flat_map(|e| {
            let text = describe_expectation(e);
            e.evaluate(&log).into_iter().map(move |v| (text.clone(), v))
        })
        .collect();
    drop(rig);
    match Arc::try_unwrap(hub) {
        Ok(h) => h.shutdown().await?,
        Err(_) => anyhow::bail!("the hub is still in use at the end of the run"),
    }
    Ok(Outcome {
        verdicts,
        interrupted,
    })
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
                        .filter(|(_, v)| !v.is_null())
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

impl Rig {
    async fn start_device(
        &mut self,
        spec: &DeviceSpec,
        id: &str,
        seed: u64,
        opts: &RunOptions,
    ) -> anyhow::Result<()> {
        if spec.run.is_some() {
            let child = self.spawn_process(spec, id)?;
            let running = Running::Process {
                spec: Box::new(spec.clone()),
                child: Some(child),
            };
            self.devices.insert(id.to_owned(), running);
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
        let device = InProcess::spawn(self.hub.as_ref(), id, dopts)?;
        self.devices
            .insert(id.to_owned(), Running::InProcess(device));
        Ok(())
    }

    fn spawn_process(&self, spec: &DeviceSpec, id: &str) -> anyhow::Result<Child> {
        let run = spec.run.as_deref().unwrap_or_default();
        let (program, args): (PathBuf, Vec<String>) = if run[0] == "sample-device" {
            // The bundled sample device: this very binary's `sample-device` subcommand.
            let mut args = vec!["sample-device".to_owned()];
            args.extend(run[1..].iter().cloned());
            for b in &self.sample_bugs {
                args.extend(["--bug".to_owned(), b.clone()]);
            }
            (std::env::current_exe()?, args)
        } else {
            (PathBuf::from(&run[0]), run[1..].to_vec())
        };
        let ca = self.out.join("ca.pem");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.out.join("devices").join(format!("{id}.log")))?;
        let mut cmd = Command::new(&program);
        cmd.args(&args)
            .env(
                "FAKEHUB_CONNECTION_STRING",
                self.hub.connection_string(id).unwrap_or_default(),
            )
            .env("FAKEHUB_CA_FILE", &ca)
            .env_remove("FAKETIME")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        match spec.clock.unwrap_or_default() {
            ClockAdapter::ClockFile => {
                if let Some(c) = &self.clock_file {
                    cmd.env("FAKEHUB_CLOCK_FILE", c);
                }
            }
            ClockAdapter::Python => {
                if let Some(c) = &self.clock_file {
                    cmd.env("FAKEHUB_CLOCK_FILE", c);
                }
                let shim = adapters_dir().join("python");
                let path = match std::env::var_os("PYTHONPATH") {
                    Some(p) => format!("{}:{}", shim.display(), p.to_string_lossy()),
                    None => shim.display().to_string(),
                };
                cmd.env("PYTHONPATH", path);
            }
            ClockAdapter::Faketime => {
                anyhow::ensure!(Path::new(LIBFAKETIME).exists(), "device `{id}` uses the faketime clock, but libfaketime is not installed (apt-get install faketime)");
                if let Some(f) = &self.faketime_file {
                    cmd.env("LD_PRELOAD", LIBFAKETIME)
                        .env("FAKETIME_TIMESTAMP_FILE", f)
                        .env("FAKETIME_NO_CACHE", "1")
                        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
                }
            }
            ClockAdapter::Real => {}
        }
        let child = cmd.spawn().map_err(|e| {
            anyhow::anyhow!("device `{id}`: cannot start {}: {e}", program.display())
        })?;
        self.device_event(id, "started", None, None);
        Ok(child)
    }

    fn device_event(&self, id: &str, action: &str, code: Option<i32>, signal: Option<i32>) {
        let subject = Subject {
            conn: None,
            device: Some(id.to_owned()),
            module: None,
        };
        self.hub.events().emit(
            &subject,
            EventKind::DeviceProcess {
                action: action.to_owned(),
                code,
                signal,
            },
        );
    }

    /// Wait (real time, bounded) until every device has connected once.
    async fn wait_connected(&self, limit: Duration) {
        let n = self.devices.len();
        let mut seen = std::collections::HashSet::new();
        let ok = self
            .hub
            .event_stream()
            .wait_for(limit, |e| {
                if let (EventKind::Connack { code: 0, .. }, Some(d)) = (&e.kind, &e.device) {
                    seen.insert(d.clone());
                }
                seen.len() >= n
            })
            .await;
        if ok.is_none() {
            eprintln!("fakehub: not every device connected within {limit:?}; going on (the expectations will tell)");
        }
        // In-process devices arm their timers right after connecting.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    async fn step(&mut self, step: &Step) -> anyhow::Result<()> {
        match step {
            Step::Advance(d) => self.advance(*d).await,
            Step::Wait(d) => {
                self.hub.clock().set_speed(self.speed);
                tokio::time::sleep(d.div_f64(self.speed)).await;
                self.hub.clock().set_speed(1.0);
            }
            Step::Fault(f) => {
                self.hub.inject(f.clone());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Step::Crash(r) => self.crash(&r.device).await,
            // Service-side failures (device offline, queue full, method timeout) are the device's
            // weather: the hub's event log records them, and the run goes on.
            Step::C2d(c) => {
                let mut message =
                    fakehub::iothub::c2d::CloudMessage::new(c.body.clone().into_bytes());
                message.message_id = c.message_id.clone();
                message.properties = c.properties.clone();
                if let Err(e) = self.hub.send_c2d(&c.device, message).await {
                    eprintln!("  c2d to {}: {e}", c.device);
                }
            }
            Step::Desired(d) => {
                let who = fakehub::IdentityRef::from_client_id(&d.device);
                if let Err(e) = self.hub.patch_desired(&who, d.patch.clone()).await {
                    eprintln!("  desired patch for {}: {e}", d.device);
                }
            }
            Step::Method(m) => {
                let who = fakehub::IdentityRef::from_client_id(&m.device);
                let timeout = m.timeout.unwrap_or(Duration::from_secs(30));
                match self
                    .hub
                    .invoke_method(&who, &m.name, m.payload.clone(), timeout)
                    .await
                {
                    Ok(r) => eprintln!("  method {} on {}: status {}", m.name, m.device, r.status),
                    Err(e) => eprintln!("  method {} on {}: {e}", m.name, m.device),
                }
            }
            Step::Stop(r) => self.stop_device(&r.device).await,
            Step::Restart(r) => {
                let spec = match self.devices.get(&r.device) {
                    Some(Running::Process { spec, .. }) => (**spec).clone(),
                    _ => anyhow::bail!("`{}` is not a device process", r.device),
                };
                self.reap(&r.device).await;
                let running = matches!(
                    self.devices.get(&r.device),
                    Some(Running::Process { child: Some(_), .. })
                );
                if !running {
                    let child = self.spawn_process(&spec, &r.device)?;
                    if let Some(Running::Process { child: slot, .. }) =
                        self.devices.get_mut(&r.device)
                    {
                        *slot = Some(child);
                    }
                }
            }
        }
        Ok(())
    }

    /// Jump; with device processes, in steps they can follow.
    async fn advance(&self, d: Duration) {
        if !self.has_processes {
            self.hub.clock().advance(d).await;
            return;
        }
        let mut left = d;
        while !left.is_zero() {
            let step = left.min(PROCESS_STEP);
            self.hub.clock().advance(step).await;
            left -= step;
            tokio::time::sleep(PROCESS_PAUSE).await;
        }
    }

    async fn crash(&mut self, id: &str) {
        if let Some(Running::Process {
            child: Some(child), ..
        }) = self.devices.get_mut(id)
        {
            let pid = child.id();
            let _ = child.start_kill();
            let status = child.wait().await.ok();
            use std::os::unix::process::ExitStatusExt;
            self.device_event(
                id,
                "crashed",
                status.and_then(|s| s.code()),
                status.and_then(|s| s.signal()),
            );
            if let Some(Running::Process { child, .. }) = self.devices.get_mut(id) {
                *child = None;
            }
            if let Some(pid) = pid {
                // libfaketime leaves its shared memory behind when its process is killed.
                let _ = std::fs::remove_file(format!("/dev/shm/faketime_shm_{pid}"));
                let _ = std::fs::remove_file(format!("/dev/shm/sem.faketime_sem_{pid}"));
            }
        }
    }

    /// Collect a process that ended by itself (an observed event), if it did.
    async fn reap(&mut self, id: &str) {
        if let Some(Running::Process {
            child: Some(child), ..
        }) = self.devices.get_mut(id)
        {
            if let Ok(Some(status)) = child.try_wait() {
                use std::os::unix::process::ExitStatusExt;
                let (code, signal) = (status.code(), status.signal());
                if let Some(Running::Process { child, .. }) = self.devices.get_mut(id) {
                    *child = None;
                }
                self.device_event(id, "exited", code, signal);
            }
        }
    }

    async fn stop_device(&mut self, id: &str) {
        if matches!(self.devices.get(id), Some(Running::InProcess(_))) {
            if let Some(Running::InProcess(device)) = self.devices.remove(id) {
                device.stop().await;
            }
            return;
        }
        if let Some(Running::Process {
            child: Some(child), ..
        }) = self.devices.get_mut(id)
        {
            {
                if let Some(pid) = child.id() {
                    let _ = std::process::Command::new("kill")
                        .args(["-TERM", &pid.to_string()])
                        .status();
                }
                let status = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await
                {
                    Ok(s) => s.ok(),
                    Err(_) => {
                        let _ = child.start_kill();
                        child.wait().await.ok()
                    }
                };
                use std::os::unix::process::ExitStatusExt;
                self.device_event(
                    id,
                    "stopped",
                    status.and_then(|s| s.code()),
                    status.and_then(|s| s.signal()),
                );
                if let Some(Running::Process { child, .. }) = self.devices.get_mut(id) {
                    *child = None;
                }
            }
        }
    }

    async fn stop_all(&mut self) {
        let ids: Vec<String> = self.devices.keys().cloned().collect();
        // Processes that ended by themselves are events too.
        for id in &ids {
            self.reap(id).await;
        }
        // In-process devices stop together (each sends DISCONNECT), processes one by one.
        let mut in_process = tokio::task::JoinSet::new();
        for id in &ids {
            match self.devices.remove(id) {
                Some(Running::InProcess(device)) => {
                    in_process.spawn(device.stop());
                }
                Some(other) => {
                    self.devices.insert(id.clone(), other);
                    self.stop_device(id).await;
                }
                None => {}
            }
        }
        in_process.join_all().await;
        self.devices.clear();
        // Let the hub see the last DISCONNECTs and closes.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The repository's `adapters/` directory (next to the binary's workspace, or the current directory).
fn adapters_dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../adapters");
    if here.exists() {
        here
    } else {
        PathBuf::from("adapters")
    }
}
