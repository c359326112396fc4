//! Percent-decoding of what devices send on every connect and message (SAS token fields, CONNECT
//! usernames, property bags). Text without a `%` (most usernames' keys and many values) is its own
//! decoding, borrowed. Otherwise the runs between escapes are copied whole into a buffer sized
//! once: the `percent_encoding` crate's decoder pushed byte by byte and grew its vector as it went,
//! and was 3 % of a 100,000-device fleet's simulation thread (a SAS signature has three escapes).
//! Decoding follows the crate's rules: `%` and two hex digits is a byte; any other `%` stays as it
//! is.

use std::borrow::Cow;

/// `s` decoded, invalid UTF-8 replaced by U+FFFD.
pub fn decode_lossy(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    match String::from_utf8(decode_bytes(s)) {
        Ok(text) => Cow::Owned(text),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

/// `s` decoded, or `None` when the decoded bytes are not UTF-8.
pub fn decode_utf8(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    String::from_utf8(decode_bytes(s)).ok().map(Cow::Owned)
}

/// The bytes `s` stands for: each `%` followed by two hex digits is that byte.
fn decode_bytes(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some(at) = rest.iter().position(|&b| b == b'%') {
        let (run, escape) = rest.split_at(at);
        out.extend_from_slice(run);
        match escape {
            [_, hi, lo, tail @ ..] => match (hex(*hi), hex(*lo)) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    rest = tail;
                }
                _ => {
                    out.push(b'%');
                    rest = escape.get(1..).unwrap_or_default();
                }
            },
            _ => {
                out.extend_from_slice(escape);
                rest = &[];
            }
        }
    }
    out.extend_from_slice(rest);
    out
}

/// The value of one hex digit.
fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_borrows_plain_text() {
        assert!(matches!(
            decode_lossy("api-version"),
            Cow::Borrowed("api-version")
        ));
        assert_eq!(decode_lossy("a%2Fb%20c"), "a/b c");
        assert_eq!(decode_lossy("bad%FF"), "bad\u{FFFD}");
        assert_eq!(
            decode_utf8("h.example%2Fdevices%2Fd").as_deref(),
            Some("h.example/devices/d")
        );
        assert!(matches!(
            decode_utf8("plain+text="),
            Some(Cow::Borrowed("plain+text="))
        ));
        assert_eq!(decode_utf8("bad%FF"), None);
        // A lone or truncated escape is kept as it is, as the crate does.
        assert_eq!(decode_lossy("100%"), "100%");
        assert_eq!(decode_lossy("%4"), "%4");
        assert_eq!(decode_lossy("%%41%g1%"), "%A%g1%");
        assert_eq!(decode_lossy("%2b%2B%7e"), "++~");
    }

    proptest::proptest! {
        /// The same decoding as the `percent_encoding` crate's, on any text: escapes of every
        /// byte, lone and truncated `%`, non-hex digits and multi-byte characters.
        #[test]
        fn decodes_as_the_crate_does(s in "([%a-fA-F0-9gG/+=é\\-]|%[0-9a-fA-F]{2}){0,40}") {
            let crate_lossy = percent_encoding::percent_decode_str(&s).decode_utf8_lossy();
            proptest::prop_assert_eq!(decode_lossy(&s), crate_lossy);
            let crate_utf8 = percent_encoding::percent_decode_str(&s).decode_utf8().ok();
            proptest::prop_assert_eq!(decode_utf8(&s), crate_utf8);
        }
    }
}
