//! The clock file: how device processes that keep their own time see the hub's virtual clock.
//!
//! Format (JSON, one object, rewritten atomically — temp file + rename — on every jump or speed
//! change):
//!
//! ```json
//! {"version":1,"anchor_real_unix":1763812345.123456,"anchor_virtual_unix":1763815945.123456,"speed":1.0,"generation":3}
//! ```
//!
//! Virtual wall time at real wall time `r` is `anchor_virtual_unix + (r - anchor_real_unix) × speed`.
//! A device's monotonic timers run at `speed` and ignore jumps. The `faketime` adapter gets a second
//! file in libfaketime's `FAKETIME_TIMESTAMP_FILE` format (`+OFFSET` seconds; jumps only, no speed).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::clock::{ClockState, VirtualClock};

/// The clock file's contents.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClockFile {
    pub version: u32,
    pub anchor_real_unix: f64,
    pub anchor_virtual_unix: f64,
    pub speed: f64,
    pub generation: u64,
}

fn unix(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

fn from_unix(secs: f64) -> SystemTime {
    if secs >= 0.0 {
        UNIX_EPOCH + Duration::from_secs_f64(secs)
    } else {
        UNIX_EPOCH - Duration::from_secs_f64(-secs)
    }
}

impl ClockFile {
    /// The file for a clock state.
    pub fn from_state(s: &ClockState) -> ClockFile {
        ClockFile {
            version: 1,
            anchor_real_unix: unix(s.real_now),
            anchor_virtual_unix: unix(s.now),
            speed: s.speed,
            generation: s.generation,
        }
    }

    /// Virtual wall time at real wall time `real`.
    pub fn virtual_at(&self, real: SystemTime) -> SystemTime {
        from_unix(self.anchor_virtual_unix + (unix(real) - self.anchor_real_unix) * self.speed)
    }

    /// The libfaketime `FAKETIME_TIMESTAMP_FILE` contents: a signed offset in seconds on one line
    /// (libfaketime 0.9.10 exits on an unsigned number; a leading space would reset it to 0).
    pub fn faketime_spec(&self) -> String {
        format!("{:+.6}\n", self.anchor_virtual_unix - self.anchor_real_unix)
    }

    /// Read a clock file.
    pub fn read(path: &Path) -> std::io::Result<ClockFile> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

/// Keeps a clock file (and optionally a libfaketime timestamp file) in step with a virtual clock.
pub struct ClockFileWriter {
    task: tokio::task::JoinHandle<()>,
}

impl ClockFileWriter {
    /// Write the files now, then again on every change of `clock`, until dropped.
    pub fn start(
        clock: &VirtualClock,
        path: PathBuf,
        faketime_path: Option<PathBuf>,
    ) -> std::io::Result<ClockFileWriter> {
        let write = move |state: &ClockState| -> std::io::Result<()> {
            let file = ClockFile::from_state(state);
            let json = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
            write_atomic(&path, &json)?;
            if let Some(ft) = &faketime_path {
                write_atomic(ft, file.faketime_spec().as_bytes())?;
            }
            Ok(())
        };
        let mut changes = clock.watch();
        write(&clock.state())?;
        let task = tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let state = *changes.borrow_and_update();
                if let Err(e) = write(&state) {
                    tracing::warn!(error = %e, "cannot write the clock file");
                }
            }
        });
        Ok(ClockFileWriter { task })
    }
}

impl Drop for ClockFileWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_file_follows_jumps_and_speed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clock.json");
        let ft = dir.path().join("faketime");
        let clock = VirtualClock::new();
        let _w = ClockFileWriter::start(&clock, path.clone(), Some(ft.clone())).unwrap();
        let f = ClockFile::read(&path).unwrap();
        let skew = unix(f.virtual_at(SystemTime::now())) - unix(clock.now());
        assert!(skew.abs() < 0.05, "{skew}");
        clock.advance(Duration::from_secs(3600)).await;
        clock.set_speed(10.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let f = ClockFile::read(&path).unwrap();
        assert_eq!(f.speed, 10.0);
        let skew = unix(f.virtual_at(SystemTime::now())) - unix(clock.now());
        assert!(skew.abs() < 0.1, "{skew}");
        let spec = std::fs::read_to_string(&ft).unwrap();
        let offset: f64 = spec.trim().parse().unwrap();
        assert!((offset - 3600.0).abs() < 1.0, "{spec}");
    }
}
