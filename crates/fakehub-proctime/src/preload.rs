//! The embedded preload library.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Error;

/// `libfakehub_time.so`, built by `build.rs` from `preload/fakehub_time.c`; empty when the build
/// found no C compiler.
pub const PRELOAD_SO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libfakehub_time.so"));

/// Access to the embedded preload.
pub struct Preload;

impl Preload {
    /// The file name [`Preload::write_to`] uses.
    pub const FILE_NAME: &'static str = "libfakehub_time.so";

    /// Whether the crate was built with the preload.
    pub fn is_built() -> bool {
        !PRELOAD_SO.is_empty()
    }

    /// Writes the preload into `dir` (mode 0755, replaced atomically) and returns its path.
    pub fn write_to(dir: impl AsRef<Path>) -> Result<PathBuf, Error> {
        if !Self::is_built() {
            return Err(Error::PreloadNotBuilt);
        }
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = dir.as_ref();
        let path = dir.join(Self::FILE_NAME);
        let tmp = dir.join(format!(
            ".{}.{}.{}",
            Self::FILE_NAME,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let io = |what: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| Error::Io {
                what,
                path: p,
                source,
            }
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&tmp)
            .map_err(io("cannot create", &tmp))?;
        let written = f
            .write_all(PRELOAD_SO)
            .and_then(|()| f.sync_all())
            .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)));
        drop(f);
        if let Err(source) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::Io {
                what: "cannot write",
                path: tmp,
                source,
            });
        }
        std::fs::rename(&tmp, &path).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            Error::Io {
                what: "cannot install",
                path: path.clone(),
                source,
            }
        })?;
        Ok(path)
    }
}
