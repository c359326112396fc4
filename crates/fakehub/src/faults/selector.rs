//! Which devices a fault hits: every one, some ids, a glob, or a seeded share of the registry.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// Which devices a fault hits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
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
