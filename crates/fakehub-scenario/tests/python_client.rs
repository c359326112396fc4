//! The Python client (`clients/python`) and the official service SDKs against `fakehub serve`: runs
//! `python3 -m pytest clients/python/tests` with this build's `fakehub`. The tests there drive the
//! control API with plain HTTP, the Python service SDK (azure-iot-hub 2.7.0) and the Node one
//! (azure-iothub 1.16.6, `tests/service/node`), with devices on the Python device SDK.

mod common;

use std::process::Command;

#[test]
fn the_python_client_and_the_official_service_sdks_drive_serve() {
    let python = common::python_with_sdk();
    let root = common::repo_root();
    let out = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-p",
            "fakehub_client.pytest_plugin",
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore::DeprecationWarning",
            "-q",
            "clients/python/tests",
        ])
        .current_dir(&root)
        .env("FAKEHUB_BIN", env!("CARGO_BIN_EXE_fakehub"))
        .env("PYTHONPATH", root.join("clients/python"))
        // The plugin is named with -p, whether or not the package is installed.
        .env("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run pytest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pytest failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(" passed"), "{stdout}");
    assert!(
        !stdout.contains("skipped"),
        "nothing may be skipped:\n{stdout}"
    );
}
