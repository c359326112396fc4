//! Property bags: the `key=value&…` tail of telemetry and C2D topics (research §4.2).
//!
//! Keys and values are percent-encoded; SDKs also encode the `$` of system keys (`%24.mid`), so both
//! are decoded before they are read. System properties have `$.` keys; the rest are the application's.

use std::collections::BTreeMap;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

/// Characters left as they are when the hub encodes a bag: RFC 2396 unreserved.
const BAG_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// A decoded property bag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropertyBag {
    /// System properties by their short key without `$.` (`mid`, `cid`, `ct`, `ce`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub system: BTreeMap<String, String>,
    /// Application properties. A key given without `=` has an empty value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub application: BTreeMap<String, String>,
}

impl PropertyBag {
    /// Parse the bag in a topic tail (with or without a leading `?`).
    pub fn parse(tail: &str) -> PropertyBag {
        let mut bag = PropertyBag::default();
        for pair in tail
            .trim_start_matches('?')
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = crate::percent::decode_lossy(k).into_owned();
            let value = crate::percent::decode_lossy(v).into_owned();
            match key.strip_prefix("$.") {
                Some(system) => bag.system.insert(system.to_owned(), value),
                None => bag.application.insert(key, value),
            };
        }
        bag
    }

    /// The message id (`$.mid`).
    pub fn message_id(&self) -> Option<&str> {
        self.system.get("mid").map(String::as_str)
    }

    /// Encode as the hub writes a bag onto a device-bound topic: system keys first as `%24.key`,
    /// then application keys, each percent-encoded.
    pub fn encode(&self) -> String {
        let system = self
            .system
            .iter()
            .map(|(k, v)| (format!("$.{k}"), v.as_str()));
        let application = self
            .application
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str()));
        encode_pairs(system.chain(application))
    }
}

/// Encode `key=value` pairs in the given order, keys and values percent-encoded (a `$.` key becomes
/// `%24.`), joined by `&`.
pub fn encode_pairs<K: AsRef<str>, V: AsRef<str>>(
    pairs: impl IntoIterator<Item = (K, V)>,
) -> String {
    let enc = |s: &str| utf8_percent_encode(s, BAG_ENCODE).to_string();
    pairs
        .into_iter()
        .map(|(k, v)| format!("{}={}", enc(k.as_ref()), enc(v.as_ref())))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_style_bag() {
        let bag = PropertyBag::parse(
            "%24.mid=m-1&%24.ct=application%2Fjson&%24.ce=utf-8&seq=1&note=a%20b&flag",
        );
        assert_eq!(bag.message_id(), Some("m-1"));
        assert_eq!(bag.system["ct"], "application/json");
        assert_eq!(bag.application["seq"], "1");
        assert_eq!(bag.application["note"], "a b");
        assert_eq!(bag.application["flag"], "");
    }

    #[test]
    fn literal_dollar_as_in_the_docs() {
        let bag = PropertyBag::parse("$.ct=application%2Fjson&$.ce=utf-8");
        assert_eq!(bag.system["ce"], "utf-8");
    }

    #[test]
    fn encode_round_trips() {
        let mut bag = PropertyBag::default();
        bag.system.insert("mid".into(), "abc 1".into());
        bag.system
            .insert("to".into(), "/devices/d/messages/devicebound".into());
        bag.application.insert("k&=".into(), "v/ü".into());
        let s = bag.encode();
        assert!(
            s.starts_with("%24.mid=abc%201&%24.to=%2Fdevices%2Fd"),
            "{s}"
        );
        assert_eq!(PropertyBag::parse(&s), bag);
    }
}
