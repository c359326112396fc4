//! A hub's output directory: locked for one hub at a time, then `ca.pem`, `events.jsonl` and
//! `connections.jsonl`.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use super::HubError;

/// The lock file inside the output directory.
pub(super) const LOCK_FILE: &str = ".lock";

/// Create `dir` and take an exclusive lock on `dir/.lock` (an advisory `flock`, released when the
/// file closes, even if the process is killed). Nothing else in `dir` is touched.
pub(super) fn lock(dir: &Path) -> Result<File, HubError> {
    let output = |path: &Path, source| HubError::Output {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| output(dir, e))?;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| output(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(HubError::OutDirInUse {
            dir: dir.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(output(&path, e)),
    }
}

/// Write the CA devices trust.
pub(super) fn write_ca(dir: &Path, pem: &str) -> Result<(), HubError> {
    let path = dir.join("ca.pem");
    std::fs::write(&path, pem).map_err(|source| HubError::Output { path, source })
}

/// Create (truncate) an output file, buffered for the writer's batches (a fleet's records come a
/// thousand at a time).
pub(super) fn file(dir: &Path, name: &str) -> Result<BufWriter<File>, HubError> {
    let path = dir.join(name);
    File::create(&path)
        .map(|f| BufWriter::with_capacity(256 * 1024, f))
        .map_err(|source| HubError::Output { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let first = lock(&out).unwrap();
        assert!(matches!(lock(&out), Err(HubError::OutDirInUse { .. })));
        drop(first);
        lock(&out).unwrap();
    }
}
