//! X.509 devices in `fakehub serve`: `fakehub certs --device ID` issues a certificate from the CA
//! serve reuses (`ca_dir`), `--self-signed` one to register by thumbprint; the official Python
//! device SDK connects with each, and a certificate that is not the device's is refused.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn certs(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fakehub"))
        .args(["certs", "--out"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    said
}

fn x509_run(
    dir: &Path,
    scenario: &[&str],
    id: &str,
    cert: &str,
    ip: &str,
    ca: &Path,
) -> common::SdkRun {
    let out = common::sdk_command(scenario, ca)
        .env("FAKEHUB_CERT_FILE", dir.join(format!("{cert}.pem")))
        .env("FAKEHUB_KEY_FILE", dir.join(format!("{cert}.key")))
        .env("FAKEHUB_HOST_NAME", "fakehub.azure-devices.net")
        .env("FAKEHUB_DEVICE_ID", id)
        .env("FAKEHUB_GATEWAY_HOST", ip)
        .output()
        .unwrap();
    common::SdkRun {
        code: out.status.code().unwrap_or(-1),
        lines: String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn ca_signed_and_self_signed_devices_connect_to_serve_with_the_python_sdk() {
    let _python = common::python_with_sdk();
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    certs(&certs_dir, &[]);
    let said = certs(&certs_dir, &["--device", "cam-ca"]);
    assert!(said.contains("issued by this CA"), "{said}");
    let said = certs(&certs_dir, &["--device", "cam-self", "--self-signed"]);
    let thumbprint = said
        .split("thumbprint: ")
        .nth(1)
        .and_then(|s| s.split('}').next())
        .unwrap()
        .to_owned();
    let key_mode = std::fs::metadata(certs_dir.join("cam-ca.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o777,
        0o600
    );

    let ip = common::free_loopback_ip(&[8883]).to_string();
    let out = dir.path().join("out");
    let config = dir.path().join("hub.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {ip}:8883\nservice_listen: null\nout: {}\nca_dir: {}\ndevices:\n  - id: cam-ca\n    x509: {{ ca: true }}\n  - id: cam-self\n    x509: {{ thumbprint: \"{thumbprint}\" }}\n",
            out.display(),
            certs_dir.display()
        ),
    )
    .unwrap();
    let serve = common::Serve::start(&config, &[]);
    let ca = certs_dir.join("ca.pem");

    for id in ["cam-ca", "cam-self"] {
        let run = x509_run(
            &certs_dir,
            &["connect-shutdown", "--auth", "x509"],
            id,
            id,
            &ip,
            &ca,
        );
        assert_eq!(run.code, 0, "{id}: {:?}\n{}", run.lines, run.stderr);
        assert_eq!(run.steps("connected").len(), 1, "{id}");
    }
    // The CA-signed certificate is not cam-self's (registered by thumbprint): refused, and the
    // console says why.
    let run = x509_run(
        &certs_dir,
        &["bad-key", "--auth", "x509", "--expect", "any"],
        "cam-self",
        "cam-ca",
        &ip,
        &ca,
    );
    assert_eq!(run.code, 0, "{:?}\n{}", run.lines, run.stderr);
    let line = serve.wait_line(
        |l| l.contains("refused 'cam-self'"),
        Duration::from_secs(10),
    );
    assert!(
        line.contains("CONNACK 5") && line.contains("Thumbprint does not match"),
        "{line}"
    );
    serve.stop();

    // A config entry that is neither is refused before anything starts.
    std::fs::write(
        &config,
        "devices:\n  - id: x\n    x509: { ca: true, thumbprint: \"AB\" }\n",
    )
    .unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_fakehub"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("`x509` takes either"));
}
