//! The C header and the Rust layout agree, field by field.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::{skip, tool};
use fakehub_proctime::layout;

#[test]
fn c_header_and_rust_layout_agree() {
    let Some(cc) = std::env::var_os("CC")
        .map(std::path::PathBuf::from)
        .or_else(|| tool("cc"))
    else {
        skip("no C compiler");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = dir.path().join("layout");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(cc)
        .arg("-I")
        .arg(root.join("preload"))
        .arg("-o")
        .arg(&bin)
        .arg(root.join("tests/probes/layout.c"))
        .status()
        .expect("run cc");
    assert!(status.success());
    let out = Command::new(&bin).output().expect("run layout");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let c: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.rsplit_once(' ')).collect();

    let rust = layout::layout_table();
    assert!(rust.len() > 30);
    for (name, value) in rust {
        assert_eq!(
            c.get(name).copied(),
            Some(value.to_string().as_str()),
            "{name}"
        );
    }
    let constants: [(&str, String); 13] = [
        ("FH_VERSION", layout::VERSION.to_string()),
        ("FH_HEADER_SIZE", layout::HEADER_SIZE.to_string()),
        ("FH_THREAD_TIMED", layout::STATE_TIMED.to_string()),
        ("FH_THREAD_UNTIMED", layout::STATE_UNTIMED.to_string()),
        ("FH_THREAD_TIMED_WALL", layout::STATE_TIMED_WALL.to_string()),
        ("FH_PROC_PRELOAD", layout::PROC_PRELOAD.to_string()),
        ("FH_PROC_HUB", layout::PROC_HUB.to_string()),
        (
            "FH_PROC_CONDVAR_CLOCK",
            layout::PROC_CONDVAR_CLOCK.to_string(),
        ),
        (
            "FH_MAGIC",
            String::from_utf8_lossy(&layout::MAGIC).to_string(),
        ),
        (
            "FH_MAX_PROCESSES_LIMIT",
            layout::MAX_PROCESSES_LIMIT.to_string(),
        ),
        (
            "FH_MAX_THREADS_LIMIT",
            layout::MAX_THREADS_LIMIT.to_string(),
        ),
        ("FH_ENV_SHM", layout::ENV_SHM.to_string()),
        ("FH_PROCESS_TABLE_OFFSET", layout::HEADER_SIZE.to_string()),
    ];
    for (name, value) in constants {
        assert_eq!(c.get(name).copied(), Some(value.as_str()), "{name}");
    }
}
