//! Writing a schedule as a standalone scenario: the base scenario's hub and devices, the
//! schedule's fleets, timeline and seed, and the one expectation it breaks, under an opening
//! comment that says where it came from and how to run it.

use std::path::Path;

use super::schedule::Schedule;
use super::trial::Target;
use crate::scenario::Scenario;

/// Where a minimal schedule came from, for the file's opening comment.
#[derive(Debug, Clone)]
pub struct Provenance {
    /// The scenario file explored.
    pub source: String,
    /// The explorer's seed.
    pub seed: u64,
    /// Which schedule (1-based) failed, and how many were tried.
    pub index: usize,
    /// Steps before and after shrinking, and the runs shrinking took.
    pub steps_before: usize,
    pub shrink_runs: usize,
    /// `--sample-bug`s the devices were given.
    pub sample_bugs: Vec<String>,
}

/// The scenario that replays `schedule` and judges only `target`.
pub fn minimal_scenario(base: &Scenario, schedule: &Schedule, target: &Target) -> Scenario {
    let mut s = schedule.scenario(base);
    s.name = format!("{}-minimal", base.name);
    s.description = Some(format!(
        "Minimal fault schedule found by fakehub explore: {} fails.",
        target.rule
    ));
    s.expect = target.expectation_of(base).cloned().into_iter().collect();
    s
}

/// `# ` before every line of `text`.
fn comment(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.is_empty() {
                "#\n".to_owned()
            } else {
                format!("# {l}\n")
            }
        })
        .collect()
}

/// The scenario as YAML (enums as one-key maps, as scenario files write them), under its comment.
pub fn to_yaml(scenario: &Scenario, header: &str) -> anyhow::Result<String> {
    let mut body = Vec::new();
    let mut ser = serde_norway::Serializer::new(&mut body);
    serde_norway::with::singleton_map_recursive::serialize(scenario, &mut ser)?;
    Ok(format!("{}{}", comment(header), String::from_utf8(body)?))
}

/// The opening comment of a minimal scenario.
pub fn header(p: &Provenance, schedule: &Schedule, target: &Target, file: &Path) -> String {
    let bugs: String = p
        .sample_bugs
        .iter()
        .map(|b| format!(" --sample-bug {b}"))
        .collect();
    let mut verdict = target.verdict.to_string();
    verdict.truncate(
        verdict
            .char_indices()
            .nth(2000)
            .map_or(verdict.len(), |(i, _)| i),
    );
    let mut h = format!(
        "Minimal fault schedule found by `fakehub explore {}{bugs} --seed {}`: schedule {} of \
         the search, shrunk from {} timeline steps to {} in {} runs.\n\
         Failing rule: {} ({})\n{verdict}\n\n",
        p.source,
        p.seed,
        p.index,
        p.steps_before,
        schedule.timeline.len(),
        p.shrink_runs,
        target.rule,
        target.expectation,
    );
    h.push_str(&format!(
        "Reproduce (the run's seed, {}, is in the file): fakehub run{bugs} {}\n",
        schedule.seed,
        file.display()
    ));
    if !p.sample_bugs.is_empty() {
        h.push_str(&format!(
            "The well-behaved sample device passes it: fakehub run {}\n",
            file.display()
        ));
    }
    h
}
