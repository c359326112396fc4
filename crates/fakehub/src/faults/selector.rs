//! Which devices a fault hits: every one, some ids, a glob, or a seeded share of the registry.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// Which devices a fault hits. Written `all`, `{ids: [a, b]}` (or just `[a, b]`), `{glob:
/// "sensor-*"}` or `{percent: 30}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", remote = "Self")]
pub enum Selector {
    #[default]
    All,
    /// These client ids (`device` or `device/module`).
    Ids(Vec<String>),
    /// Client ids matching a pattern with `*` and `?`.
    Glob(String),
    /// This share of the registered devices, drawn with the run's seed.
    Percent(u8),
}

impl Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Selector::serialize(self, s)
    }
}

/// Reads the tagged forms, and a bare list of ids as `ids`.
impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Selector;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`all`, a list of device ids, or one of `ids`, `glob`, `percent`")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Selector, E> {
                Selector::deserialize(serde::de::value::StrDeserializer::new(v))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Selector, A::Error> {
                let mut ids = Vec::new();
                while let Some(id) = seq.next_element::<String>()? {
                    ids.push(id);
                }
                Ok(Selector::Ids(ids))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Selector, A::Error> {
                Selector::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_any(Visit)
    }
}

impl schemars::JsonSchema for Selector {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Selector".into()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let tagged = <SelectorForms as schemars::JsonSchema>::json_schema(g);
        schemars::json_schema!({
            "description": "Which devices a fault hits: `all`, a list of ids, or one of `ids`, `glob`, `percent`.",
            "anyOf": [
                {"type": "array", "items": {"type": "string"}, "description": "These client ids."},
                tagged,
            ]
        })
    }
}

/// The tagged forms of [`Selector`], for its schema.
#[derive(schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum SelectorForms {
    All,
    /// These client ids (`device` or `device/module`).
    Ids(Vec<String>),
    /// Client ids matching a pattern with `*` and `?`.
    Glob(String),
    /// This share of the registered devices, drawn with the run's seed.
    Percent(u8),
}

/// A selector resolved against the registry: a fixed set for `percent`, a predicate otherwise.
#[derive(Debug, Clone)]
pub(crate) enum Matcher {
    All,
    Set(std::collections::BTreeSet<String>),
    Glob(wildmatch::WildMatch),
}

impl Matcher {
    pub(crate) fn resolve(selector: &Selector, registered: &[String], seed: u64) -> Matcher {
        match selector {
            Selector::All => Matcher::All,
            Selector::Ids(ids) => Matcher::Set(ids.iter().cloned().collect()),
            Selector::Glob(g) => Matcher::Glob(wildmatch::WildMatch::new(g)),
            Selector::Percent(p) => {
                let mut ids = registered.to_vec();
                ids.sort();
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                ids.shuffle(&mut rng);
                let n = ids
                    .len()
                    .saturating_mul(usize::from((*p).min(100)))
                    .div_ceil(100);
                Matcher::Set(ids.into_iter().take(n).collect())
            }
        }
    }

    pub(crate) fn matches(&self, client_id: &str) -> bool {
        match self {
            Matcher::All => true,
            Matcher::Set(s) => {
                s.contains(client_id) || client_id.split('/').next().is_some_and(|d| s.contains(d))
            }
            Matcher::Glob(g) => g.matches(client_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_forms() {
        let read = |s: &str| serde_json::from_str::<Selector>(s);
        assert_eq!(read(r#""all""#).unwrap(), Selector::All);
        assert_eq!(
            read(r#"["a","b"]"#).unwrap(),
            Selector::Ids(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            read(r#"{"ids":["a"]}"#).unwrap(),
            Selector::Ids(vec!["a".into()])
        );
        assert_eq!(read(r#"{"percent":30}"#).unwrap(), Selector::Percent(30));
        assert!(read(r#"{"pct":30}"#)
            .unwrap_err()
            .to_string()
            .contains("expected one of"));
        assert_eq!(
            serde_json::to_string(&Selector::Percent(5)).unwrap(),
            r#"{"percent":5}"#
        );
    }

    #[test]
    fn selectors() {
        let reg: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
        let m = Matcher::resolve(&Selector::Percent(30), &reg, 7);
        let hit: Vec<&String> = reg.iter().filter(|d| m.matches(d)).collect();
        assert_eq!(hit.len(), 3);
        let again = Matcher::resolve(&Selector::Percent(30), &reg, 7);
        assert!(
            reg.iter().all(|d| m.matches(d) == again.matches(d)),
            "same seed, same devices"
        );
        let g = Matcher::resolve(&Selector::Glob("sensor-?".into()), &reg, 0);
        assert!(g.matches("sensor-1") && !g.matches("sensor-10"));
        let ids = Matcher::resolve(&Selector::Ids(vec!["edge".into()]), &reg, 0);
        assert!(ids.matches("edge") && ids.matches("edge/module") && !ids.matches("edge2"));
    }
}
