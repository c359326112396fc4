//! Compiles `preload/fakehub_time.c` into `libfakehub_time.so` in OUT_DIR; the crate embeds it.
//! Without a C compiler (or off Linux) an empty blob is embedded and the Rust API reports
//! `Error::PreloadNotBuilt` instead.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=preload/fakehub_time.c");
    println!("cargo:rerun-if-changed=preload/fakehub_clock_shm.h");
    println!("cargo:rerun-if-env-changed=CC");
    let out_dir = match std::env::var_os("OUT_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            println!("cargo:warning=OUT_DIR is not set");
            std::process::exit(1);
        }
    };
    let so = out_dir.join("libfakehub_time.so");
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if target_os != "linux" || !(target_arch == "x86_64" || target_arch == "aarch64") {
        embed_nothing(
            &so,
            "the fakehub time preload is built for Linux x86_64 and aarch64 only",
        );
        return;
    }
    let tool = match cc::Build::new()
        .cargo_metadata(false)
        .cargo_warnings(false)
        .try_get_compiler()
    {
        Ok(t) => t,
        Err(e) => {
            embed_nothing(
                &so,
                &format!("no C compiler for the fakehub time preload: {e}"),
            );
            return;
        }
    };
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let src = manifest.join("preload").join("fakehub_time.c");
    let mut cmd = tool.to_command();
    cmd.args([
        "-shared",
        "-fPIC",
        "-O2",
        "-pthread",
        "-fvisibility=hidden",
        "-Wall",
        "-Wextra",
        "-o",
    ])
    .arg(&so)
    .arg(&src)
    .arg("-ldl");
    run_compiler(cmd, &so);
}

fn run_compiler(mut cmd: Command, so: &Path) {
    match cmd.output() {
        Ok(out) if out.status.success() => {
            for line in String::from_utf8_lossy(&out.stderr).lines() {
                println!("cargo:warning={line}");
            }
        }
        Ok(out) => {
            // A compiler that exists but rejects the source is a bug here, not a missing tool.
            for line in String::from_utf8_lossy(&out.stderr).lines() {
                println!("cargo:warning={line}");
            }
            println!(
                "cargo:warning=compiling the fakehub time preload failed: {}",
                out.status
            );
            std::process::exit(1);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            embed_nothing(
                so,
                &format!("no C compiler for the fakehub time preload: {e}"),
            );
        }
        Err(e) => {
            println!("cargo:warning=cannot run the C compiler for the fakehub time preload: {e}");
            std::process::exit(1);
        }
    }
}

fn embed_nothing(so: &Path, why: &str) {
    println!("cargo:warning={why}; process devices cannot run on virtual time with this build");
    if let Err(e) = std::fs::write(so, b"") {
        println!("cargo:warning=cannot write {}: {e}", so.display());
        std::process::exit(1);
    }
}
