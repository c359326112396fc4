//! Request bodies: JSON read with the path of the field that did not fit, so a bad request is told
//! which field and what was expected (never a crash, never a guess).

use serde::de::DeserializeOwned;

/// Why a body was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    /// The field, as a path (`fault.type`, `properties.desired`); empty for the body as a whole.
    pub field: String,
    /// What was wrong and what was expected (serde's words).
    pub message: String,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "the body: {}", self.message)
        } else {
            write!(f, "`{}`: {}", self.field, self.message)
        }
    }
}

/// Parse a JSON body (an empty body reads as `null`).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"null"
    } else {
        bytes
    };
    let mut de = serde_json::Deserializer::from_slice(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." || field == "?" {
            String::new()
        } else {
            field
        };
        let message = e.inner().to_string();
        // serde_json appends the position, which names nothing a caller can act on for a short body.
        let message = match message.rsplit_once(" at line ") {
            Some((m, _)) => m.to_owned(),
            None => message,
        };
        BodyError { field, message }
    })?;
    de.end().map_err(|e| BodyError {
        field: String::new(),
        message: e.to_string(),
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        inner: Inner,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse::<Outer>(br#"{"inner": {"n": "x"}}"#).unwrap_err();
        assert_eq!(e.field, "inner.n");
        assert!(e.message.contains("expected u32"), "{}", e.message);
        let e = parse::<Outer>(b"{").unwrap_err();
        assert_eq!(e.field, "");
        let e = parse::<Outer>(b"").unwrap_err();
        assert!(e.message.contains("expected struct Outer"), "{}", e.message);
    }
}
