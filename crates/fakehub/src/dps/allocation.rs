//! Allocation: which linked hub a registration is assigned to.
//!
//! `hashed` (DPS's "evenly weighted distribution") spreads registrations over the hubs that are in
//! rotation, deterministically: each registration goes to the hub with the highest hash of
//! (registration id, hub name), so taking one hub out of rotation moves only its own devices.
//! `static` always assigns the named hub, in rotation or not (as DPS does: it does not know
//! whether a hub is healthy). A hub goes out of rotation while a `hub_down` fault holds it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How registrations are spread over the linked hubs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", tag = "policy", deny_unknown_fields)]
pub enum Allocation {
    /// Evenly weighted distribution over the hubs in rotation (the default).
    #[default]
    Hashed,
    /// Always this hub (its host name).
    Static { hub: String },
}

/// A hub as allocation sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub name: &'a str,
    /// Out of rotation (a `hub_down` fault).
    pub down: bool,
}

fn weight(registration_id: &str, hub: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(registration_id.as_bytes());
    h.update([0]);
    h.update(hub.to_ascii_lowercase().as_bytes());
    h.finalize().into()
}

impl Allocation {
    /// The index of the hub to assign `registration_id` to, or `None` when no hub can take it.
    pub fn pick(&self, registration_id: &str, hubs: &[Candidate<'_>]) -> Option<usize> {
        match self {
            Allocation::Hashed => hubs
                .iter()
                .enumerate()
                .filter(|(_, h)| !h.down)
                .max_by_key(|(_, h)| weight(registration_id, h.name))
                .map(|(i, _)| i),
            Allocation::Static { hub } => {
                hubs.iter().position(|h| h.name.eq_ignore_ascii_case(hub))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hubs(down: &[&str]) -> Vec<Candidate<'static>> {
        ["hub-a", "hub-b", "hub-c"]
            .into_iter()
            .map(|name| Candidate {
                name,
                down: down.contains(&name),
            })
            .collect()
    }

    #[test]
    fn hashed_spreads_and_moves_only_the_devices_of_a_hub_taken_out() {
        let all = hubs(&[]);
        let ids: Vec<String> = (0..300).map(|i| format!("dev-{i}")).collect();
        let first: Vec<usize> = ids
            .iter()
            .map(|d| Allocation::Hashed.pick(d, &all).unwrap())
            .collect();
        for hub in 0..3 {
            let n = first.iter().filter(|h| **h == hub).count();
            assert!((60..=140).contains(&n), "hub {hub} got {n} of 300");
        }
        let without_b = hubs(&["hub-b"]);
        for (d, before) in ids.iter().zip(&first) {
            let after = Allocation::Hashed.pick(d, &without_b).unwrap();
            assert_ne!(after, 1);
            if *before != 1 {
                assert_eq!(after, *before, "{d} moved although its hub stayed");
            }
        }
        assert_eq!(
            Allocation::Hashed.pick("d", &hubs(&["hub-a", "hub-b", "hub-c"])),
            None
        );
    }

    #[test]
    fn static_assigns_its_hub_even_when_down() {
        let s = Allocation::Static {
            hub: "HUB-C".into(),
        };
        assert_eq!(s.pick("d", &hubs(&["hub-c"])), Some(2));
        let gone = Allocation::Static {
            hub: "hub-z".into(),
        };
        assert_eq!(gone.pick("d", &hubs(&[])), None);
    }
}
