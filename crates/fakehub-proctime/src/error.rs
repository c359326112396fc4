use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `build.rs` found no C compiler, so the crate carries no preload.
    #[error("the fakehub time preload was not built: no C compiler")]
    PreloadNotBuilt,
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Mapping the clock file failed.
    #[error("cannot map the clock file {}: {source}", path.display())]
    Map {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Table sizes out of range.
    #[error("invalid clock file limits: {0}")]
    InvalidLimits(String),
    /// Options out of range (wake signal, slices, driver settings).
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// An anchor the processes could not use (speed not finite or negative).
    #[error("invalid anchor: {0}")]
    InvalidAnchor(String),
    /// No free process slot.
    #[error("the clock file's process table is full ({0} slots)")]
    ProcessTableFull(u32),
    /// The driver ran out of its real-time budget before reaching its target.
    #[error(
        "the time driver used its real-time budget of {budget:?} and reached virtual {reached_virt_mono_ns} ns of {target_virt_mono_ns} ns"
    )]
    RealTimeBudget {
        budget: std::time::Duration,
        reached_virt_mono_ns: i64,
        target_virt_mono_ns: i64,
    },
}
