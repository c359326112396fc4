//! The Python time-warp shim's own tests (adapters/python/test_shim.py), run with the interpreter
//! that has the Azure SDK so its SDK and paho cases run too.

mod common;

use std::process::Command;

#[test]
fn the_python_shim_passes_its_tests() {
    let python = common::python_with_sdk();
    let out = Command::new(&python)
        .arg("test_shim.py")
        .current_dir(common::repo_root().join("adapters/python"))
        .env("FAKEHUB_PYTHON", &python)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("skipped"),
        "the SDK cases must run, not skip:\n{stderr}"
    );
}
