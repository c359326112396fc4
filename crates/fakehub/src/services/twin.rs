//! Device and module twins as a device sees them: the desired and reported sections, each with its
//! own `$version` (research §4.1).
//!
//! A twin GET is answered with `{"desired":{…,"$version":n},"reported":{…,"$version":m}}`; a
//! reported PATCH is a JSON merge patch (`null` removes a property) that bumps the reported
//! `$version`; a desired patch from the service side does the same to the desired section and is
//! pushed to the device with its new `$version`. A new twin starts at version 1 in both sections.
//!
//! Patches are checked as IoT Hub documents it (device-twins guide): a JSON object, keys of at most
//! 1 KB without control characters, `.`, `$` or spaces, at most 10 levels deep, and each section at
//! most 32 KB. A patch that breaks a rule changes nothing and is answered 400.
//!
//! Documents are written in IoT Hub's order: the properties as they were added, then `$version`.
//!
//! The service side also sees the twin's `tags` (a JSON object only the service side reads and
//! writes) and its overall `version`, bumped by every change of any section; its ETag is the base64
//! of that version as 8 big-endian bytes, as IoT Hub writes twin ETags (`AAAAAAAAAAE=`).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use serde_json::{Map, Value};

/// The largest a section may grow to, in bytes of JSON.
pub const MAX_SECTION_BYTES: usize = 32 * 1024;
/// The deepest a section may nest.
pub const MAX_DEPTH: usize = 10;
/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why a patch was refused (answered with status 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("the patch is not JSON: {0}")]
    NotJson(String),
    #[error("the patch is not a JSON object")]
    NotAnObject,
    #[error("the key `{0}` is not allowed (empty, over 1 KB, or with a control character, `.`, `$` or a space)")]
    BadKey(String),
    #[error("the patch nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error(
        "the {section} section would be {bytes} bytes of JSON; IoT Hub allows {MAX_SECTION_BYTES}"
    )]
    TooLarge { section: &'static str, bytes: usize },
}

/// One identity's twin.
#[derive(Debug, Clone, PartialEq)]
pub struct Twin {
    pub desired: Map<String, Value>,
    pub desired_version: u64,
    pub reported: Map<String, Value>,
    pub reported_version: u64,
    /// The service side's tags.
    pub tags: Map<String, Value>,
    /// Bumped by every change of any section (the twin's ETag).
    pub version: u64,
}

impl Default for Twin {
    fn default() -> Self {
        Twin {
            desired: Map::new(),
            desired_version: 1,
            reported: Map::new(),
            reported_version: 1,
            tags: Map::new(),
            version: 1,
        }
    }
}

/// The merge patch that turns `old` into `new` (`null` for what went away), as a device gets a
/// replaced desired section.
fn diff(old: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut patch = Map::new();
    for key in old.keys() {
        if !new.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    for (key, value) in new {
        match (old.get(key), value) {
            (Some(a), b) if a == b => {}
            (Some(Value::Object(a)), Value::Object(b)) => {
                patch.insert(key.clone(), Value::Object(diff(a, b)));
            }
            _ => {
                patch.insert(key.clone(), value.clone());
            }
        }
    }
    patch
}

/// The section with its `$version` last, as IoT Hub writes it (readers such as the Azure SDK for
/// C's twin sample stop at `$version`). Maps keep insertion order (serde_json `preserve_order`).
fn with_version(section: &Map<String, Value>, version: u64) -> Value {
    let mut out = section.clone();
    out.insert("$version".to_owned(), Value::from(version));
    Value::Object(out)
}

fn key_allowed(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && !key
            .chars()
            .any(|c| c.is_control() || matches!(c, '.' | '$' | ' '))
}

/// Check keys and depth of a patch (an object at `depth`).
fn check_object(object: &Map<String, Value>, depth: usize) -> Result<(), PatchError> {
    if depth > MAX_DEPTH {
        return Err(PatchError::TooDeep);
    }
    for (key, value) in object {
        if !key_allowed(key) {
            return Err(PatchError::BadKey(key.chars().take(64).collect()));
        }
        if let Value::Object(inner) = value {
            check_object(inner, depth + 1)?;
        }
    }
    Ok(())
}

/// Apply a JSON merge patch: objects merge, `null` removes, anything else replaces.
fn merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                // Keep the order of what stays (documents list properties as they were added).
                target.shift_remove(key);
            }
            Value::Object(inner) => {
                let slot = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(existing) = slot {
                    merge(existing, inner);
                }
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

/// Apply a checked patch to a copy of `section`; the copy if it stays within the size limit.
fn patched(
    section: &Map<String, Value>,
    patch: &Value,
    name: &'static str,
) -> Result<Map<String, Value>, PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::NotAnObject);
    };
    check_object(patch, 1)?;
    let mut next = section.clone();
    merge(&mut next, patch);
    let bytes = serde_json::to_vec(&next).map(|v| v.len()).unwrap_or(0);
    if bytes > MAX_SECTION_BYTES {
        return Err(PatchError::TooLarge {
            section: name,
            bytes,
        });
    }
    Ok(next)
}

impl Twin {
    /// The body of a twin GET response.
    pub fn document(&self) -> Value {
        serde_json::json!({
            "desired": with_version(&self.desired, self.desired_version),
            "reported": with_version(&self.reported, self.reported_version),
        })
    }

    /// Apply a reported-properties PATCH as the device sent it; the new reported `$version`.
    pub fn patch_reported(&mut self, body: &[u8]) -> Result<u64, PatchError> {
        let patch: Value =
            serde_json::from_slice(body).map_err(|e| PatchError::NotJson(e.to_string()))?;
        self.reported = patched(&self.reported, &patch, "reported")?;
        self.reported_version += 1;
        self.version += 1;
        Ok(self.reported_version)
    }

    /// Apply a desired-properties patch from the service side; the new desired `$version` and the
    /// notification body the device gets (the patch with `$version`).
    pub fn patch_desired(&mut self, patch: &Value) -> Result<(u64, Value), PatchError> {
        self.service_update(None, Some(patch))
            .map(|n| n.unwrap_or((self.desired_version, Value::Null)))
    }

    /// The service side's partial update: merge patches of the tags and of the desired section,
    /// both checked before either applies. With a desired patch: the new desired `$version` and
    /// the notification the device gets.
    pub fn service_update(
        &mut self,
        tags: Option<&Value>,
        desired: Option<&Value>,
    ) -> Result<Option<(u64, Value)>, PatchError> {
        let new_tags = tags.map(|t| patched(&self.tags, t, "tags")).transpose()?;
        let new_desired = desired
            .map(|d| patched(&self.desired, d, "desired"))
            .transpose()?;
        if let Some(t) = new_tags {
            self.tags = t;
        }
        self.version += 1;
        let (Some(d), Some(patch)) = (new_desired, desired) else {
            return Ok(None);
        };
        self.desired = d;
        self.desired_version += 1;
        let mut notification = patch.as_object().cloned().unwrap_or_default();
        notification.insert("$version".to_owned(), Value::from(self.desired_version));
        Ok(Some((self.desired_version, Value::Object(notification))))
    }

    /// The service side's replacement of the tags and the desired section. When the desired
    /// section changed: its new `$version` and the notification the device gets (the merge patch
    /// from the old section to the new, `null` for removed properties).
    pub fn replace(
        &mut self,
        tags: &Value,
        desired: &Value,
    ) -> Result<Option<(u64, Value)>, PatchError> {
        let new_tags = patched(&Map::new(), tags, "tags")?;
        let new_desired = patched(&Map::new(), desired, "desired")?;
        let change = diff(&self.desired, &new_desired);
        self.tags = new_tags;
        self.version += 1;
        if change.is_empty() {
            return Ok(None);
        }
        self.desired = new_desired;
        self.desired_version += 1;
        let mut notification = change;
        notification.insert("$version".to_owned(), Value::from(self.desired_version));
        Ok(Some((self.desired_version, Value::Object(notification))))
    }

    /// The twin's ETag (base64 of the version as 8 big-endian bytes).
    pub fn etag(&self) -> String {
        B64.encode(self.version.to_be_bytes())
    }
}

/// The desired `$version` a reported patch acknowledges, by IoT Plug and Play's convention for
/// writable properties (`{"prop": {"value": …, "ac": 200, "av": <desired $version>}}`, also inside a
/// component): the highest `av` found, if any.
pub fn acknowledged_version(reported_patch: &[u8]) -> Option<u64> {
    fn walk(v: &Value, depth: usize, best: &mut Option<u64>) {
        let Value::Object(map) = v else { return };
        if let Some(av) = map.get("av").and_then(Value::as_u64) {
            if map.contains_key("ac") {
                *best = Some(best.map_or(av, |b| b.max(av)));
            }
        }
        if depth < MAX_DEPTH {
            for child in map.values() {
                walk(child, depth + 1, best);
            }
        }
    }
    let v: Value = serde_json::from_slice(reported_patch).ok()?;
    let mut best = None;
    walk(&v, 0, &mut best);
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_new_twin_has_version_1_in_both_sections() {
        assert_eq!(
            Twin::default().document(),
            json!({"desired": {"$version": 1}, "reported": {"$version": 1}})
        );
    }

    #[test]
    fn reported_patches_merge_and_bump_the_version() {
        let mut t = Twin::default();
        assert_eq!(
            t.patch_reported(br#"{"fw":"1.0","net":{"ssid":"a","rssi":-40}}"#),
            Ok(2)
        );
        assert_eq!(
            t.patch_reported(br#"{"net":{"rssi":null},"fw":"1.1"}"#),
            Ok(3)
        );
        assert_eq!(
            t.document()["reported"],
            json!({"fw": "1.1", "net": {"ssid": "a"}, "$version": 3})
        );
        assert_eq!(t.desired_version, 1, "desired untouched");
    }

    #[test]
    fn desired_patches_notify_with_their_version() {
        let mut t = Twin::default();
        let (v, note) = t.patch_desired(&json!({"interval": 5})).unwrap();
        assert_eq!(v, 2);
        assert_eq!(note, json!({"interval": 5, "$version": 2}));
        assert_eq!(
            t.document()["desired"],
            json!({"interval": 5, "$version": 2})
        );
    }

    #[test]
    fn documents_put_version_last_and_keep_property_order() {
        let mut t = Twin::default();
        let (_, note) = t
            .patch_desired(&json!({"device_count": 42, "alpha": 1}))
            .unwrap();
        assert_eq!(
            note.to_string(),
            r#"{"device_count":42,"alpha":1,"$version":2}"#
        );
        t.patch_desired(&json!({"zeta": true, "device_count": null}))
            .unwrap();
        t.patch_reported(br#"{"b":1,"a":2}"#).unwrap();
        assert_eq!(
            t.document().to_string(),
            r#"{"desired":{"alpha":1,"zeta":true,"$version":3},"reported":{"b":1,"a":2,"$version":2}}"#
        );
    }

    #[test]
    fn service_updates_and_replacements() {
        let mut t = Twin::default();
        assert_eq!(t.etag(), "AAAAAAAAAAE=");
        let n = t
            .service_update(
                Some(&json!({"env": "test"})),
                Some(&json!({"a": 1, "b": {"c": 2}})),
            )
            .unwrap();
        assert_eq!(n, Some((2, json!({"a": 1, "b": {"c": 2}, "$version": 2}))));
        assert_eq!(t.version, 2);
        assert_eq!(t.etag(), "AAAAAAAAAAI=");
        // Tags only: the device hears nothing.
        assert_eq!(
            t.service_update(Some(&json!({"env": null})), None),
            Ok(None)
        );
        assert!(t.tags.is_empty());
        // A replacement tells the device the difference.
        let n = t
            .replace(&json!({"site": "lab"}), &json!({"b": {"c": 3}, "z": true}))
            .unwrap();
        assert_eq!(
            n,
            Some((
                3,
                json!({"a": null, "b": {"c": 3}, "z": true, "$version": 3})
            ))
        );
        assert_eq!(
            t.document()["desired"],
            json!({"b": {"c": 3}, "z": true, "$version": 3})
        );
        // A bad tag changes nothing, not even the desired section.
        let before = t.clone();
        assert!(t
            .service_update(Some(&json!({"a.b": 1})), Some(&json!({"q": 1})))
            .is_err());
        assert_eq!(t, before);
    }

    #[test]
    fn bad_patches_change_nothing() {
        let mut t = Twin::default();
        let deep = (0..11).fold(json!(1), |inner, _| json!({ "a": inner }));
        type Check = fn(&PatchError) -> bool;
        let cases: Vec<(Vec<u8>, Check)> = vec![
            (b"{not json".to_vec(), |e| {
                matches!(e, PatchError::NotJson(_))
            }),
            (b"[1,2]".to_vec(), |e| *e == PatchError::NotAnObject),
            (b"5".to_vec(), |e| *e == PatchError::NotAnObject),
            (br#"{"a.b":1}"#.to_vec(), |e| {
                matches!(e, PatchError::BadKey(_))
            }),
            (br#"{"$x":1}"#.to_vec(), |e| {
                matches!(e, PatchError::BadKey(_))
            }),
            (br#"{"a b":1}"#.to_vec(), |e| {
                matches!(e, PatchError::BadKey(_))
            }),
            (br#"{"ok":{"\u0001":1}}"#.to_vec(), |e| {
                matches!(e, PatchError::BadKey(_))
            }),
            (deep.to_string().into_bytes(), |e| *e == PatchError::TooDeep),
            (
                json!({ "big": "x".repeat(MAX_SECTION_BYTES) })
                    .to_string()
                    .into_bytes(),
                |e| matches!(e, PatchError::TooLarge { .. }),
            ),
        ];
        for (body, is_expected) in cases {
            let e = t.patch_reported(&body).unwrap_err();
            assert!(is_expected(&e), "{e}");
        }
        assert_eq!(t, Twin::default());
        // Ten levels are fine.
        let ten = (0..10).fold(json!(1), |inner, _| json!({ "a": inner }));
        assert_eq!(t.patch_reported(ten.to_string().as_bytes()), Ok(2));
    }
}
