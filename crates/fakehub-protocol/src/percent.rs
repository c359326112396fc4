//! Percent-decoding of what devices send on every connect and message (SAS token fields, CONNECT
//! usernames, property bags): the `percent_encoding` crate, after a quick look for a `%` (most
//! usernames' keys and many values have none, and then the text is its own decoding, borrowed).

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// `s` decoded, invalid UTF-8 replaced by U+FFFD.
pub fn decode_lossy(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    percent_decode_str(s).decode_utf8_lossy()
}

/// `s` decoded, or `None` when the decoded bytes are not UTF-8.
pub fn decode_utf8(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    percent_decode_str(s).decode_utf8().ok()
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
    }
}
