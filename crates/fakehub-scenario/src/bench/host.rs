//! The machine's CPU time as `/proc/stat` counts it, for the share a hypervisor stole: on a VM
//! whose host runs other guests, a stolen vCPU stops every thread on it for milliseconds, which
//! shows in PUBACK latencies and CPU per message without being any server's doing.

use anyhow::Context;

/// The machine's CPU time so far, in clock ticks (all CPUs).
#[derive(Clone, Copy, Debug, Default)]
pub struct Ticks {
    /// Time a vCPU was ready to run and the hypervisor ran something else (`steal`).
    pub stolen: u64,
    /// Every state: user, nice, system, idle, iowait, irq, softirq, steal.
    pub total: u64,
}

impl Ticks {
    /// Now, from `/proc/stat`.
    pub fn now() -> anyhow::Result<Ticks> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        Ticks::parse(&stat).context("no cpu line in /proc/stat")
    }

    /// The first (all CPUs) line of `/proc/stat`.
    fn parse(stat: &str) -> Option<Ticks> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        Some(Ticks {
            stolen: fields.get(7).copied().unwrap_or(0),
            total: fields.iter().fold(0u64, |a, b| a.saturating_add(*b)),
        })
    }

    /// The percentage of the machine's CPU time stolen since `earlier`.
    pub fn stolen_since(&self, earlier: &Ticks) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        100.0 * self.stolen.saturating_sub(earlier.stolen) as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steal_column_is_the_eighth_and_a_share_of_every_state() {
        let before =
            Ticks::parse("cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n").unwrap();
        assert_eq!(before.stolen, 35);
        assert_eq!(before.total, 1000);
        let after = Ticks::parse("cpu  200 0 100 1540 10 0 15 135 0 0\n").unwrap();
        assert!((after.stolen_since(&before) - 10.0).abs() < 1e-9);
        assert_eq!(before.stolen_since(&before), 0.0);
        assert!(Ticks::parse("intr 1 2 3\n").is_none());
        assert!(Ticks::parse("cpu  1 2 x\n").is_none());
    }
}
