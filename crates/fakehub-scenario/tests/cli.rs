//! The command line: bad configuration is reported with file, line and column, and nothing runs.

use std::process::Command;

fn fakehub(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fakehub"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_typo_in_a_serve_config_is_located_and_nothing_listens() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hub.yaml");
    std::fs::write(
        &cfg,
        "host_name: h.example\nlisten: 127.0.0.1:0\ndevics:\n  - id: a\n",
    )
    .unwrap();
    let (code, err) = fakehub(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("hub.yaml:3:1"), "{err}");
    assert!(err.contains("unknown field `devics`"), "{err}");
    assert!(!dir.path().join("fakehub-out").exists());
}

#[test]
fn a_wrong_type_and_a_bad_key_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hub.yaml");
    std::fs::write(
        &cfg,
        "listen: 127.0.0.1:0\ndevices:\n  - id: a\n    primary_key: [1, 2]\n",
    )
    .unwrap();
    let (code, err) = fakehub(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("hub.yaml:4:18"), "{err}");
    std::fs::write(
        &cfg,
        "listen: 127.0.0.1:0\ndevices:\n  - id: a\n    primary_key: \"not base64!\"\n",
    )
    .unwrap();
    let (code, err) = fakehub(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("device 'a'") && err.contains("base64"),
        "{err}"
    );
    assert!(
        !err.contains("not base64!"),
        "the key itself is not echoed: {err}"
    );
}

#[test]
fn certs_writes_a_ca_that_serve_can_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let (code, err) = fakehub(&["certs", "--out", ca_dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let ca = std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap();
    let key = std::fs::read_to_string(ca_dir.join("ca-key.pem")).unwrap();
    let certs = fakehub::tls::HubCertificates::from_ca_pem(&ca, &key, "h.example").unwrap();
    assert_eq!(
        certs.ca_pem(),
        ca,
        "serve's ca_dir serves the same CA devices trust"
    );
}

// ---- Issue 14 ----

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_fakehub"))
        .arg("schema")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // `| head -c 10`: read a little, then close the pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut head = [0u8; 10];
    stdout.read_exact(&mut head).unwrap();
    drop(stdout);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(status.code(), Some(0), "{err}");
}

#[test]
fn an_error_says_its_cause_once() {
    // Two hubs on one address: the second cannot listen.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hub.yaml");
    let out = dir.path().join("out");
    std::fs::write(
        &cfg,
        format!(
            "listen: {addr}\nout: {}\ndevices:\n  - id: a\n",
            out.display()
        ),
    )
    .unwrap();
    let (code, err) = fakehub(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("Address already in use"), "{err}");
    assert_eq!(err.matches("os error 98").count(), 1, "{err}");
}

#[test]
fn serve_raises_the_descriptor_limit_and_refuses_cleanly_when_out_of_them() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hub.yaml");
    let out = dir.path().join("out");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\nout: {}\ndevices:\n  - id: a\n",
            out.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fakehub"));
    cmd.args(["serve", "--config", cfg.to_str().unwrap()])
        .env("FAKEHUB_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // A soft limit of 64 under a hard one of 96: the hub raises it to 96, then runs out.
    unsafe {
        cmd.pre_exec(|| {
            let rl = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 96,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    // serve says where it listens.
    let mut addr = None;
    let mut line = String::new();
    while addr.is_none() {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "serve ended");
        addr = line.split_whitespace().find_map(|w| {
            w.trim_end_matches([',', '.'])
                .parse::<std::net::SocketAddr>()
                .ok()
        });
    }
    let addr = addr.unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(
        open_files.split_whitespace().filter(|w| *w == "96").count() == 2,
        "soft raised to hard: {open_files}"
    );
    // Hold idle connections past the limit; the extra ones are refused at once (reset or closed),
    // not left hanging in the backlog.
    let mut idle = Vec::new();
    for _ in 0..120 {
        idle.push(std::net::TcpStream::connect(addr).unwrap());
    }
    let probe = std::net::TcpStream::connect(addr).unwrap();
    probe
        .set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    let mut buf = [0u8; 1];
    let started = std::time::Instant::now();
    let r = std::io::Read::read(&mut &probe, &mut buf);
    assert!(
        matches!(&r, Ok(0))
            || r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "refused, not left waiting: {r:?} after {:?}",
        started.elapsed()
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    drop(idle);
    drop(probe);
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    child.wait().unwrap();
    let warnings = rest.matches("out of file descriptors").count();
    assert!(
        (1..=3).contains(&warnings),
        "at most one line a second: {warnings}\n{rest}"
    );
}

#[test]
fn a_zero_keepalive_cap_in_a_serve_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hub.yaml");
    std::fs::write(&cfg, "listen: 127.0.0.1:0\nkeepalive_cap: 0s\n").unwrap();
    let (code, err) = fakehub(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`keepalive_cap` may be 1s to 31days"), "{err}");
}
