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
