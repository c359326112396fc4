//! Shared test harness: a clock file in a temporary directory, the preload written next to it,
//! probe processes spawned on it with their output collected, and the reference driver.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fakehub_proctime::{run_until_with, Anchor, ClockShm, Limits, Preload, RunOptions, RunReport};

pub const SEC: i64 = 1_000_000_000;

/// Tests of one binary run one at a time: they measure timing on a 2-core machine.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A program on PATH, or None (the test is skipped with a printed reason).
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub fn skip(why: &str) {
    eprintln!("SKIPPED: {why}");
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub shm: ClockShm,
    pub preload: PathBuf,
}

impl Harness {
    /// None (with the reason printed) when the crate carries no preload.
    pub fn new() -> Option<Harness> {
        Self::with_limits(Limits {
            max_processes: 64,
            max_threads: 1024,
        })
    }

    pub fn with_limits(limits: Limits) -> Option<Harness> {
        if !Preload::is_built() {
            skip("the fakehub time preload was not built (no C compiler)");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let shm = ClockShm::create(dir.path().join("clock"), limits).expect("clock file");
        let preload = Preload::write_to(dir.path()).expect("preload");
        Some(Harness { dir, shm, preload })
    }

    /// Virtual clock starting at a recognisable point: 2030-01-01T00:00:00Z, monotonic 10^15 ns.
    pub fn set_epoch(&self, speed: f64) {
        self.shm
            .publish(Anchor {
                real_mono_ns: fakehub_proctime::real_mono_ns(),
                virt_mono_ns: 1_000_000_000_000_000,
                virt_wall_ns: 1_893_456_000 * SEC,
                speed,
            })
            .expect("publish");
    }

    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.envs(self.shm.env(&self.preload));
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Spawns and registers the process; its stdout/stderr lines are collected.
    pub fn spawn(&self, mut cmd: Command) -> Proc {
        let mut child = cmd.spawn().expect("spawn probe");
        self.shm
            .register_process(child.id() as i32)
            .expect("register process");
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(s) = child.stdout.take() {
            let out = out.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(s).lines().map_while(Result::ok) {
                    out.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            }));
        }
        if let Some(s) = child.stderr.take() {
            let err = err.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(s).lines().map_while(Result::ok) {
                    err.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            }));
        }
        Proc {
            child,
            out,
            err,
            readers,
            status: None,
        }
    }

    /// Drives virtual time until the process exits; panics past `max_virtual` or `max_real`.
    pub fn drive(&self, p: &mut Proc, max_virtual: Duration, max_real: Duration) -> RunReport {
        self.drive_with(p, max_virtual, max_real, |_| {})
    }

    /// As [`drive`], calling `each` on every driver step (e.g. to watch the tables).
    pub fn drive_with(
        &self,
        p: &mut Proc,
        max_virtual: Duration,
        max_real: Duration,
        mut each: impl FnMut(&ClockShm),
    ) -> RunReport {
        let target = self
            .shm
            .now()
            .virt_mono_ns
            .saturating_add(max_virtual.as_nanos() as i64);
        let opts = RunOptions {
            max_real: Some(max_real),
            ..RunOptions::default()
        };
        let shm = &self.shm;
        let report = run_until_with(shm, target, &[], &opts, || {
            each(shm);
            p.exited()
        })
        .unwrap_or_else(|e| {
            let _ = p.child.kill();
            panic!(
                "driver: {e}\nstdout: {:?}\nstderr: {:?}",
                p.out_lines(),
                p.err_lines()
            )
        });
        assert!(
            report.stopped,
            "the probe did not exit within {max_virtual:?} of virtual time\nstdout: {:?}\nstderr: {:?}",
            p.out_lines(),
            p.err_lines()
        );
        p.finish();
        report
    }
}

pub struct Proc {
    pub child: Child,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    pub status: Option<std::process::ExitStatus>,
}

impl Proc {
    pub fn exited(&mut self) -> bool {
        if self.status.is_some() {
            return true;
        }
        match self.child.try_wait() {
            Ok(Some(s)) => {
                self.status = Some(s);
                true
            }
            _ => false,
        }
    }

    /// Waits (real time, bounded) for exit, then for the output readers.
    pub fn wait_real(&mut self, max: Duration) {
        let start = Instant::now();
        while !self.exited() {
            if start.elapsed() > max {
                let _ = self.child.kill();
                panic!(
                    "the probe did not exit within {max:?} real\nstdout: {:?}\nstderr: {:?}",
                    self.out_lines(),
                    self.err_lines()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.finish();
    }

    pub fn finish(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let status = self.status.expect("exited");
        assert!(
            status.success(),
            "probe failed: {status}\nstdout: {:?}\nstderr: {:?}",
            self.out_lines(),
            self.err_lines()
        );
    }

    pub fn out_lines(&self) -> Vec<String> {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn err_lines(&self) -> Vec<String> {
        self.err.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Lines `EVENT <name> k=v …` parsed into name -> fields.
    pub fn events(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut map = BTreeMap::new();
        for line in self.out_lines() {
            let mut parts = line.split_whitespace();
            if parts.next() != Some("EVENT") {
                continue;
            }
            let Some(name) = parts.next() else { continue };
            let fields = parts
                .filter_map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect();
            map.insert(name.to_string(), fields);
        }
        map
    }
}

pub fn field_i64(ev: &BTreeMap<String, String>, key: &str) -> i64 {
    ev.get(key)
        .unwrap_or_else(|| panic!("field {key} missing in {ev:?}"))
        .parse::<f64>()
        .unwrap_or_else(|_| panic!("field {key} not a number in {ev:?}")) as i64
}

/// Compiles a C probe from tests/probes with the system C compiler; None (skipped) without one.
pub fn compile_c(h: &Harness, name: &str) -> Option<PathBuf> {
    let cc = std::env::var_os("CC")
        .map(PathBuf::from)
        .or_else(|| tool("cc"))
        .or_else(|| tool("gcc"));
    let Some(cc) = cc else {
        skip("no C compiler (cc/gcc) for the C probes");
        return None;
    };
    let src = probe_path(name);
    let out = h.dir.path().join(name.trim_end_matches(".c"));
    let status = Command::new(&cc)
        .args(["-O1", "-pthread", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run the C compiler");
    assert!(status.success(), "compiling {} failed", src.display());
    Some(out)
}

pub fn probe_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("probes")
        .join(name)
}

/// Asserts `elapsed` (ns) is `expected` (ns) or later (1 ms of rounding allowed), by at most `late` (ns).
pub fn assert_on_time(what: &str, elapsed: i64, expected: i64, late: i64) {
    assert_within(what, elapsed, expected, 1_000_000, late);
}

/// Asserts `expected - early <= elapsed <= expected + late` (ns).
pub fn assert_within(what: &str, elapsed: i64, expected: i64, early: i64, late: i64) {
    assert!(
        elapsed >= expected - early && elapsed <= expected + late,
        "{what}: woke after {:.6} s virtual, expected {:.3} s (- {:.3} s, + {:.3} s)",
        elapsed as f64 / 1e9,
        expected as f64 / 1e9,
        early as f64 / 1e9,
        late as f64 / 1e9
    );
}
