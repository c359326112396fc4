//! `junit.xml`: one test case per expectation (and device), so CI shows each verdict.

use std::collections::BTreeMap;

use fakehub::events::ClockMode;
use fakehub_assert::Verdict;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// The mode's name as the event log spells it.
fn mode_name(mode: ClockMode) -> String {
    serde_json::to_value(mode)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// One scenario's verdicts, for the report.
pub struct ScenarioResult {
    pub name: String,
    pub verdicts: Vec<(String, Verdict)>,
    pub interrupted: bool,
    /// How each device kept time (a property of the suite and of each of the device's cases).
    pub clocks: BTreeMap<String, ClockMode>,
}

/// The JUnit XML of a set of scenario runs.
pub fn render(runs: &[ScenarioResult]) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    for ScenarioResult {
        name,
        verdicts,
        interrupted,
        clocks,
    } in runs
    {
        let failures = verdicts
            .iter()
            .filter(|(_, v)| v.judged && !v.passed)
            .count()
            + usize::from(*interrupted);
        let errors = verdicts.iter().filter(|(_, v)| !v.judged).count();
        x.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\">\n",
            esc(name),
            verdicts.len() + usize::from(*interrupted)
        ));
        if !clocks.is_empty() {
            x.push_str("    <properties>\n");
            for (device, mode) in clocks {
                x.push_str(&format!(
                    "      <property name=\"clock.{}\" value=\"{}\"/>\n",
                    esc(device),
                    mode_name(*mode)
                ));
            }
            x.push_str("    </properties>\n");
        }
        for (text, v) in verdicts {
            let case = match &v.device {
                Some(d) => format!("{text} [{d}]"),
                None => text.clone(),
            };
            x.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"{}\">",
                esc(name),
                esc(&case)
            ));
            if let Some(mode) = v.device.as_ref().and_then(|d| clocks.get(d)) {
                x.push_str(&format!(
                    "<properties><property name=\"clock\" value=\"{}\"/></properties>",
                    mode_name(*mode)
                ));
            }
            if v.passed {
                x.push_str(&format!("<system-out>{}</system-out>", esc(&v.summary)));
            } else if !v.judged {
                // Neither a pass nor a fail: JUnit's `error` (the test could not run to a verdict).
                x.push_str(&format!(
                    "<error type=\"cannot-judge\" message=\"{}\"/>",
                    esc(&v.summary)
                ));
            } else {
                x.push_str(&format!(
                    "<failure message=\"{}\">{}</failure>",
                    esc(&v.summary),
                    esc(&v.excerpt.join("\n"))
                ));
            }
            x.push_str("</testcase>\n");
        }
        if *interrupted {
            x.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"run\"><failure message=\"interrupted\"/></testcase>\n",
                esc(name)
            ));
        }
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
}
