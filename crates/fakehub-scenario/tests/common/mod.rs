//! Shared by the end-to-end tests: the real Python SDK, and the lock for port 8883.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Hold this while a test uses port 8883 (the port the Azure SDKs hard-code). A file lock, so it also
/// serializes tests that run in separate processes (cargo-nextest).
pub struct Port8883(#[allow(dead_code)] File);

pub fn lock_8883() -> Port8883 {
    let path = std::env::temp_dir().join("fakehub-port-8883.lock");
    let file = File::create(&path).expect("create the 8883 lock file");
    file.lock().expect("lock the 8883 lock file");
    Port8883(file)
}

fn has_sdk(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import azure.iot.device, azure.iot.hub, pytest, sys; sys.exit(0 if azure.iot.device.constant.VERSION == '2.14.0' else 1)"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A Python interpreter with azure-iot-device 2.14.0 (and the rest of tests/python/requirements.txt:
/// azure-iot-hub, pytest): `FAKEHUB_PYTHON` if set, else `python3` if it
/// has the SDK, else a virtual environment under the target directory, provisioned from PyPI once.
pub fn python_with_sdk() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if let Ok(p) = std::env::var("FAKEHUB_PYTHON") {
                let p = PathBuf::from(p);
                assert!(
                    has_sdk(&p),
                    "FAKEHUB_PYTHON={} lacks azure-iot-device 2.14.0",
                    p.display()
                );
                return p;
            }
            let system = PathBuf::from("python3");
            if has_sdk(&system) {
                return system;
            }
            let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sdk-venv");
            let python = venv.join("bin/python");
            // Serialize provisioning between test processes.
            let lock =
                File::create(Path::new(env!("CARGO_TARGET_TMPDIR")).join("sdk-venv.lock")).unwrap();
            lock.lock().unwrap();
            if !has_sdk(&python) {
                let ok = Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv)
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "python3 -m venv failed (install python3-venv)");
                let reqs = repo_root().join("tests/python/requirements.txt");
                let ok = Command::new(&python)
                    .args(["-m", "pip", "install", "--quiet", "-r"])
                    .arg(reqs)
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "pip install of the Azure IoT Python SDK failed");
            }
            assert!(
                has_sdk(&python),
                "the SDK venv at {} is not usable",
                venv.display()
            );
            python
        })
        .clone()
}

/// The result of one `sdk_client.py` run.
#[derive(Debug)]
pub struct SdkRun {
    pub code: i32,
    pub lines: Vec<serde_json::Value>,
    pub stderr: String,
}

impl SdkRun {
    /// The lines whose `step` is `step`.
    pub fn steps(&self, step: &str) -> Vec<&serde_json::Value> {
        self.lines.iter().filter(|l| l["step"] == step).collect()
    }
}

/// `python tests/python/sdk_client.py ARGS` with the SDK's interpreter and the CA file to trust.
pub fn sdk_command(args: &[&str], ca_file: &Path) -> Command {
    let mut cmd = Command::new(python_with_sdk());
    cmd.arg(repo_root().join("tests/python/sdk_client.py"))
        .args(args)
        .env("FAKEHUB_CA_FILE", ca_file);
    cmd
}

fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Run `tests/python/sdk_client.py` with a connection string and CA file.
pub fn run_sdk_client(args: &[&str], connection_string: &str, ca_file: &Path) -> SdkRun {
    let out = sdk_command(args, ca_file)
        .env("FAKEHUB_CONNECTION_STRING", connection_string)
        .output()
        .expect("run sdk_client.py");
    SdkRun {
        code: out.status.code().unwrap_or(-1),
        lines: json_lines(&out.stdout),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A running `sdk_client.py` whose JSON lines are read as they come, so a test can act on them
/// (e.g. send a C2D message once the client printed `ready`).
pub struct SdkProcess {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<serde_json::Value>,
    seen: Vec<serde_json::Value>,
    stderr: std::thread::JoinHandle<String>,
}

impl SdkProcess {
    pub fn spawn(mut cmd: Command) -> SdkProcess {
        use std::io::{BufRead, Read};
        use std::process::Stdio;
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sdk_client.py");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        SdkProcess {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Wait (real time) for the next line whose `step` is `step`; panics with what the client
    /// printed if it does not come.
    pub async fn wait_step(
        &mut self,
        step: &str,
        timeout: std::time::Duration,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.lines.try_recv() {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if v["step"] == step {
                        return v;
                    }
                }
                Err(std::sync::mpsc::TryRecvError::Empty)
                    if std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(_) => panic!(
                    "no `{step}` line from sdk_client.py; it printed {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Wait (real time, bounded) for the client to exit; everything it printed.
    pub async fn finish(mut self, timeout: std::time::Duration) -> SdkRun {
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("poll sdk_client.py") {
                break status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                break self.child.wait().expect("reap sdk_client.py");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        // The reader thread ends at EOF; take what is left.
        while let Ok(v) = self.lines.recv_timeout(std::time::Duration::from_secs(2)) {
            self.seen.push(v);
        }
        SdkRun {
            code: status.code().unwrap_or(-1),
            lines: self.seen,
            stderr: self.stderr.join().unwrap_or_default(),
        }
    }
}

/// A hub on 127.0.0.1:8883 (the port the Azure SDKs always use), host `myhub.azure-devices.net`,
/// and its CA written to `dir/ca.pem`. Hold [`lock_8883`] while it runs.
pub async fn hub_on_8883(b: fakehub::HubBuilder, dir: &Path) -> (fakehub::HubHandle, PathBuf) {
    let hub = b
        .host_name("myhub.azure-devices.net")
        .listen(std::net::SocketAddr::from(([127, 0, 0, 1], 8883)))
        .build()
        .expect("hub certificates")
        .start()
        .await
        .expect("port 8883 is free");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, hub.ca_pem()).expect("write ca.pem");
    (hub, ca)
}

/// A running `fakehub serve`, its console (stderr) read line by line as it comes.
pub struct Serve {
    pub child: std::process::Child,
    console: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Serve {
    /// Start `fakehub serve --config CONFIG ARGS` and wait (real time, 30 s at most) for the line
    /// that says it listens.
    pub fn start(config: &Path, args: &[&str]) -> Serve {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_fakehub"))
            .args(["serve", "--config"])
            .arg(config)
            .args(args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start fakehub serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let console = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = console.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                lines.lock().unwrap().push(line);
            }
        });
        let serve = Serve { child, console };
        serve.wait_line(
            |l| l.contains("listening on"),
            std::time::Duration::from_secs(30),
        );
        serve
    }

    /// Every console line so far.
    pub fn console(&self) -> Vec<String> {
        self.console.lock().unwrap().clone()
    }

    /// Wait (real time) for a console line that matches; panics with the console if none comes.
    pub fn wait_line(&self, pred: impl Fn(&str) -> bool, timeout: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(l) = self.console().into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "serve did not print the line expected; its console:\n{}",
                self.console().join("\n")
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait (10 s at most) for a clean exit.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "serve exited with {status}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "serve did not stop on SIGTERM"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address of a test's own, `127.x.y.z`, on which `ports` are free now (so a hub's
/// listeners for real SDKs, which connect to fixed ports, do not meet another test's).
pub fn free_loopback_ip(ports: &[u16]) -> std::net::Ipv4Addr {
    let seed = u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    for attempt in 0..1000u64 {
        let n = seed.wrapping_add(attempt.wrapping_mul(0x0001_0203));
        let ip = std::net::Ipv4Addr::new(127, (n >> 16) as u8, (n >> 8) as u8, (n as u8).max(2));
        let free = ports
            .iter()
            .all(|p| std::net::TcpListener::bind((ip, *p)).is_ok());
        if free {
            return ip;
        }
    }
    panic!("no free loopback address for ports {ports:?}");
}

/// Every line of a JSON-lines file (events.jsonl, connections.jsonl), parsed.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The Node device SDK app's dependencies are installed (`.ci/run` installs them).
pub fn node_modules_present() {
    let dir = repo_root().join("tests/devices/node/node_modules/azure-iot-device");
    assert!(
        dir.exists(),
        "run `npm ci --prefix tests/devices/node` first (.ci/run does)"
    );
}

/// The message ids of the QoS 1 PUBLISHes in an event log, in order.
pub fn qos1_message_ids(events: &[fakehub::Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            fakehub::EventKind::Publish {
                message_id: Some(id),
                qos: 1,
                ..
            } => Some(id.clone()),
            _ => None,
        })
        .collect()
}

/// A run's connections.jsonl as (operation, level, code), in order.
pub fn record_summary(out: &Path) -> Vec<(String, String, Option<u32>)> {
    read_jsonl::<fakehub::ConnectionRecord>(&out.join("connections.jsonl"))
        .iter()
        .map(|r| (r.operation_name.clone(), r.level.clone(), r.code()))
        .collect()
}

/// A `serve` config in `dir` for `myhub.azure-devices.net` on 127.0.0.1:8883 (take
/// [`lock_8883`] first) with one device and no service API; returns (config file, output dir).
pub fn serve_config_8883(dir: &Path, device: &str, key: &str) -> (PathBuf, PathBuf) {
    let out = dir.join("fakehub-out");
    let config = dir.join("hub.yaml");
    std::fs::write(
        &config,
        format!(
            "host_name: myhub.azure-devices.net\nlisten: 127.0.0.1:8883\nservice_listen: null\nout: {}\ndevices:\n  - id: {device}\n    primary_key: \"{key}\"\n",
            out.display()
        ),
    )
    .unwrap();
    (config, out)
}
