//! `fakehub serve` owns its output directory while it runs, and says why it refused a connection.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

fn files(out: &Path) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    all.sort();
    all
}

#[test]
fn a_second_serve_on_the_same_out_exits_2_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let config = dir.path().join("hub.yaml");
    let ip = common::free_loopback_ip(&[]);
    std::fs::write(
        &config,
        format!(
            "listen: {ip}:0\nservice_listen: null\nout: {}\ndevices:\n  - id: sensor-1\n",
            out.display()
        ),
    )
    .unwrap();
    let first = common::Serve::start(&config, &[]);
    let before = files(&out);
    let names: Vec<&str> = before.iter().map(|(n, _)| n.as_str()).collect();
    for f in [
        "ca.pem",
        "events.jsonl",
        "connections.jsonl",
        "connection-strings.txt",
    ] {
        assert!(names.contains(&f), "{f} in {names:?}");
    }

    let second = std::process::Command::new(env!("CARGO_BIN_EXE_fakehub"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{said}");
    assert!(
        said.contains("another hub is using the output directory"),
        "{said}"
    );
    assert_eq!(
        files(&out),
        before,
        "the first hub's files are byte-identical"
    );
    first.stop();
}

#[test]
fn a_refused_connection_is_one_console_line_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let config = dir.path().join("hub.yaml");
    let ip = common::free_loopback_ip(&[]);
    std::fs::write(
        &config,
        format!(
            "listen: {ip}:0\nservice_listen: null\nout: {}\ndevices:\n  - id: sensor-1\n",
            out.display()
        ),
    )
    .unwrap();
    let serve = common::Serve::start(&config, &[]);
    let listening = serve.console().join("\n");
    let addr: std::net::SocketAddr = listening
        .split("listening on ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    // Not TLS: the handshake fails.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let line = serve.wait_line(|l| l.contains("refused"), Duration::from_secs(10));
    assert!(
        line.contains("closed before CONNACK (tls_failed)"),
        "{line}"
    );
    assert!(
        line.contains(&format!("from {}", s.local_addr().unwrap())),
        "{line}"
    );
    serve.stop();
}
