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
        .args(["-c", "import azure.iot.device, sys; sys.exit(0 if azure.iot.device.constant.VERSION == '2.14.0' else 1)"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A Python interpreter with azure-iot-device 2.14.0: `FAKEHUB_PYTHON` if set, else `python3` if it
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

/// Run `tests/python/sdk_client.py` with a connection string and CA file.
pub fn run_sdk_client(args: &[&str], connection_string: &str, ca_file: &Path) -> SdkRun {
    let out = Command::new(python_with_sdk())
        .arg(repo_root().join("tests/python/sdk_client.py"))
        .args(args)
        .env("FAKEHUB_CONNECTION_STRING", connection_string)
        .env("FAKEHUB_CA_FILE", ca_file)
        .output()
        .expect("run sdk_client.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    SdkRun {
        code: out.status.code().unwrap_or(-1),
        lines: stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
