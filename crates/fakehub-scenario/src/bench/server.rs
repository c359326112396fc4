//! The servers under measurement, each a process of its own so that its memory and CPU can be read
//! from `/proc`: `fakehub serve` (this binary), Debian's mosquitto and the bare tokio-rustls
//! acceptor ([`super::bare`], `fakehub bench-peer`), each with a TLS listener on a free loopback
//! port and certificates from one CA the benchmark makes.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Fakehub,
    /// Debian's mosquitto as it comes: small answers are left to Nagle's algorithm.
    Mosquitto,
    /// The same mosquitto with `set_tcp_nodelay true`: it answers each packet at once, as fakehub
    /// does.
    MosquittoNodelay,
    /// A bare tokio-rustls acceptor that answers just enough MQTT ([`super::bare`]).
    Bare,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Fakehub => "fakehub",
            Kind::Mosquitto => "mosquitto",
            Kind::MosquittoNodelay => "mosquitto-nodelay",
            Kind::Bare => "bare",
        }
    }
}

/// The benchmark's CA (written as `ca.pem`/`ca-key.pem`, serve's `ca_dir`) and a server
/// certificate for 127.0.0.1 (`server.pem`/`server-key.pem`, mosquitto's).
pub struct Certificates {
    pub dir: PathBuf,
    pub ca_der: Vec<u8>,
}

impl Certificates {
    pub fn generate(dir: &Path) -> anyhow::Result<Certificates> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let ca_key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "fakehub bench CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key)?;
        let ca_der = ca.der().to_vec();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))
        };
        write("ca.pem", &ca.pem())?;
        write("ca-key.pem", &ca_key.serialize_pem())?;
        let issuer = Issuer::new(params, ca_key);
        let mut server =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        server
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        server.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate()?;
        let cert = server.signed_by(&server_key, &issuer)?;
        write("server.pem", &cert.pem())?;
        write("server-key.pem", &server_key.serialize_pem())?;
        Ok(Certificates {
            dir: dir.to_owned(),
            ca_der,
        })
    }
}

/// What the servers need to know about the fleet.
pub struct Fleet<'a> {
    pub host_name: &'a str,
    pub key: &'a str,
    pub ids: &'a [String],
}

/// A running server process.
pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    child: Child,
    /// How to start it again (the same port and files).
    command: (PathBuf, Vec<String>),
    log: PathBuf,
    /// fakehub's output directory, moved aside at a kill (see [`Server::kill_and_restart`]).
    out: Option<PathBuf>,
}

/// Where a killed fakehub's output directory goes.
fn killed_output(out: &Path) -> PathBuf {
    out.with_extension("killed")
}

/// A free port on 127.0.0.1 (the kernel's pick, released for the server to bind).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Server {
    /// Write the server's configuration into `dir` and start it on a free port.
    pub async fn start(
        kind: Kind,
        dir: &Path,
        certs: &Certificates,
        fleet: &Fleet<'_>,
        mosquitto: &Path,
        mosquitto_conf: &[String],
        wrap: &[String],
    ) -> anyhow::Result<Server> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        std::fs::create_dir_all(dir)?;
        let out = (kind == Kind::Fakehub).then(|| dir.join("out"));
        let command = match kind {
            Kind::Fakehub => {
                let mut yaml = String::new();
                let _ = writeln!(yaml, "host_name: {}", fleet.host_name);
                let _ = writeln!(yaml, "listen: {addr}");
                let _ = writeln!(yaml, "out: {}", dir.join("out").display());
                let _ = writeln!(yaml, "ca_dir: {}", certs.dir.display());
                let _ = writeln!(yaml, "devices:");
                for id in fleet.ids {
                    let _ = writeln!(yaml, "  - {{ id: {id}, primary_key: \"{}\" }}", fleet.key);
                }
                let config = dir.join("fakehub.yaml");
                std::fs::write(&config, yaml)?;
                let exe = std::env::current_exe().context("cannot find the fakehub binary")?;
                let args = vec![
                    "serve".to_owned(),
                    "--config".to_owned(),
                    config.display().to_string(),
                    "--no-service-api".to_owned(),
                ];
                (exe, args)
            }
            Kind::Bare => {
                let exe = std::env::current_exe().context("cannot find the fakehub binary")?;
                let c = &certs.dir;
                let args = vec![
                    "bench-peer".to_owned(),
                    "--listen".to_owned(),
                    addr.to_string(),
                    "--cert".to_owned(),
                    c.join("server.pem").display().to_string(),
                    "--key".to_owned(),
                    c.join("server-key.pem").display().to_string(),
                ];
                (exe, args)
            }
            Kind::Mosquitto | Kind::MosquittoNodelay => {
                let c = &certs.dir;
                let mut conf = String::new();
                let _ = writeln!(conf, "listener {port} 127.0.0.1");
                let _ = writeln!(conf, "allow_anonymous true");
                let _ = writeln!(conf, "persistence false");
                let _ = writeln!(conf, "log_dest stderr");
                let _ = writeln!(conf, "log_type error");
                let _ = writeln!(conf, "log_type warning");
                let _ = writeln!(conf, "cafile {}", c.join("ca.pem").display());
                let _ = writeln!(conf, "certfile {}", c.join("server.pem").display());
                let _ = writeln!(conf, "keyfile {}", c.join("server-key.pem").display());
                // SAFETY: geteuid reads the process's effective user id.
                if unsafe { libc::geteuid() } == 0 {
                    // As root mosquitto would switch to the `mosquitto` user, which cannot read the
                    // benchmark's files.
                    let _ = writeln!(conf, "user root");
                }
                if kind == Kind::MosquittoNodelay {
                    let _ = writeln!(conf, "set_tcp_nodelay true");
                }
                for line in mosquitto_conf {
                    let _ = writeln!(conf, "{line}");
                }
                let config = dir.join("mosquitto.conf");
                std::fs::write(&config, conf)?;
                let args = vec!["-c".to_owned(), config.display().to_string()];
                (mosquitto.to_owned(), args)
            }
        };
        let command = match wrap.split_first() {
            Some((first, rest)) => {
                let mut args = rest.to_vec();
                args.push(command.0.display().to_string());
                args.extend(command.1);
                (PathBuf::from(first), args)
            }
            None => command,
        };
        let log = dir.join(format!("{}.log", kind.name()));
        let child = spawn(&command, &log)?;
        let mut server = Server {
            kind,
            addr,
            child,
            command,
            log,
            out,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait until the port accepts TCP connections (at most 30 s).
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before listening on {}; see {}",
                    self.kind.name(),
                    self.addr,
                    self.log.display()
                );
            }
            if Instant::now() > until {
                bail!(
                    "{} did not listen on {} within 30 s",
                    self.kind.name(),
                    self.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Kill the process (SIGKILL: every connection ends at once) and start it again on the same
    /// port; returns once it listens. fakehub's output directory is moved aside first (a rename)
    /// and removed by [`Server::forget_killed_output`]: the runs before the kill left gigabytes of
    /// events.jsonl there (more, the more messages a server answered), and a restart that
    /// truncates them measured the file system, not the reconnection (mosquitto keeps no log).
    pub async fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        if let Some(out) = &self.out {
            if out.exists() {
                std::fs::rename(out, killed_output(out))
                    .with_context(|| format!("cannot move {} aside", out.display()))?;
            }
        }
        self.child = spawn(&self.command, &self.log)?;
        self.wait_ready().await
    }

    /// Remove what the killed server wrote (after the measurement).
    pub fn forget_killed_output(&self) {
        if let Some(out) = &self.out {
            let _ = std::fs::remove_dir_all(killed_output(out));
        }
    }

    /// Resident memory, bytes (`VmRSS`).
    pub fn rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .context("no VmRSS in /proc/PID/status")?;
        Ok(kb * 1024)
    }

    /// Context switches so far, summed over the process's threads (voluntary and not, from
    /// `/proc/PID/task/*/status`): a thread that sleeps and is woken again counts one. Threads that
    /// already ended are not counted (a server's threads live as long as it does).
    pub fn switches(&self) -> anyhow::Result<u64> {
        let mut total = 0u64;
        for task in std::fs::read_dir(format!("/proc/{}/task", self.pid()))? {
            let Ok(status) = std::fs::read_to_string(task?.path().join("status")) else {
                continue; // the thread ended meanwhile
            };
            for line in status.lines() {
                let count = line
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"));
                if let Some(n) = count.and_then(|n| n.trim().parse::<u64>().ok()) {
                    total = total.saturating_add(n);
                }
            }
        }
        Ok(total)
    }

    /// CPU time used so far by the process's threads named `name` (none: no such thread).
    pub fn thread_cpu(&self, name: &str) -> anyhow::Result<Option<Duration>> {
        let mut total = None;
        for task in std::fs::read_dir(format!("/proc/{}/task", self.pid()))? {
            let path = task?.path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
            if let Ok(stat) = std::fs::read_to_string(path.join("stat")) {
                let t = cpu_of_stat(&stat)?;
                total = Some(total.unwrap_or(Duration::ZERO) + t);
            }
        }
        Ok(total)
    }

    /// CPU time used so far (user + system, `/proc/PID/stat` utime + stime).
    pub fn cpu(&self) -> anyhow::Result<Duration> {
        cpu_of_stat(&std::fs::read_to_string(format!(
            "/proc/{}/stat",
            self.pid()
        ))?)
    }
}

/// CPU time this process (the benchmark and its load tool) used so far, user + system.
pub fn own_cpu() -> anyhow::Result<Duration> {
    cpu_of_stat(&std::fs::read_to_string("/proc/self/stat")?)
}

/// utime + stime of a `/proc/.../stat` line.
fn cpu_of_stat(stat: &str) -> anyhow::Result<Duration> {
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime is field 14 and stime 15 (1-based), i.e. 11 and 12 after the state.
    let ticks = tick(11) + tick(12);
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn((exe, args): &(PathBuf, Vec<String>), log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot write {}", log.display()))?;
    let err = out.try_clone()?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))
}
