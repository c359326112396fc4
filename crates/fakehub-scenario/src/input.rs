//! Reading the YAML files users write, with errors that name file, line and column.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A problem with an input file. Displayed as `FILE:LINE:COLUMN: what was expected`.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// Parse a YAML file into `T`, locating any error.
pub fn read_yaml<T: DeserializeOwned>(path: &Path) -> Result<T, InputError> {
    let text = std::fs::read_to_string(path).map_err(|source| InputError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_yaml(path, &text)
}

/// Parse YAML text that came from `path`.
pub fn parse_yaml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, InputError> {
    // Enums are written as one-key maps (`- advance: 64m`, `- recovers: { within: 60s }`).
    let de = serde_norway::Deserializer::from_str(text);
    serde_norway::with::singleton_map_recursive::deserialize(de).map_err(
        |e: serde_norway::Error| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            // The library appends its own " at line L column C"; the prefix says it already.
            let message = e.to_string();
            let message = match message.rfind(" at line ") {
                Some(i) => message[..i].to_owned(),
                None => message,
            };
            InputError::Syntax {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        },
    )
}
