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

/// The largest input file read: scenarios and configs are hand-written, a few KB.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// The deepest nesting of `[` and `{` accepted (the YAML parser's time grows with the square of
/// it; a scenario needs 3 or 4).
pub const MAX_NESTING: usize = 32;

/// Read an input file (at most [`MAX_FILE_BYTES`]).
pub fn read_text(path: &Path) -> Result<String, InputError> {
    use std::io::Read;
    let io = |source| InputError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(InputError::Invalid {
            path: path.to_owned(),
            message: format!(
                "the file is over {MAX_FILE_BYTES} bytes (the limit for a scenario or config file)"
            ),
        });
    }
    Ok(text)
}

/// Parse a YAML file into `T`, locating any error.
pub fn read_yaml<T: DeserializeOwned>(path: &Path) -> Result<T, InputError> {
    parse_yaml(path, &read_text(path)?)
}

/// Refuse what would cost the YAML parser too much before it sees it: over [`MAX_FILE_BYTES`],
/// or `[`/`{` nested deeper than [`MAX_NESTING`] (outside quotes and comments).
pub fn check_shape(path: &Path, text: &str) -> Result<(), InputError> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(InputError::Invalid {
            path: path.to_owned(),
            message: format!("the text is over {MAX_FILE_BYTES} bytes"),
        });
    }
    let (mut depth, mut quote) = (0usize, None::<char>);
    let mut prev = '\n';
    let mut escaped = false;
    for (i, line) in text.split('\n').enumerate() {
        let mut comment = false;
        for (col, c) in line.chars().enumerate() {
            match (quote, c) {
                _ if comment => {}
                (Some('"'), '\\') if !escaped => {
                    escaped = true;
                    prev = c;
                    continue;
                }
                (Some(q), c) if c == q && !escaped => quote = None,
                (Some(_), _) => {}
                (None, '#') if prev.is_whitespace() || col == 0 => comment = true,
                (None, '\'' | '"') => quote = Some(c),
                (None, '[' | '{') => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Err(InputError::Syntax {
                            path: path.to_owned(),
                            line: i + 1,
                            column: col + 1,
                            message: format!(
                                "`{c}` nested {depth} deep: at most {MAX_NESTING} levels are allowed"
                            ),
                        });
                    }
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
            escaped = false;
            prev = c;
        }
        prev = '\n';
    }
    Ok(())
}

/// Parse YAML text that came from `path`.
pub fn parse_yaml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, InputError> {
    check_shape(path, text)?;
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
