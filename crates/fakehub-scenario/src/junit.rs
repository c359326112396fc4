//! `junit.xml`: one test case per expectation (and device), so CI shows each verdict.

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

/// One scenario's verdicts, for the report.
pub struct ScenarioResult {
    pub name: String,
    pub verdicts: Vec<(String, Verdict)>,
    pub interrupted: bool,
}

/// The JUnit XML of a set of scenario runs.
pub fn render(runs: &[ScenarioResult]) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    for ScenarioResult {
        name,
        verdicts,
        interrupted,
    } in runs
    {
        let failures =
            verdicts.iter().filter(|(_, v)| !v.passed).count() + usize::from(*interrupted);
        x.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\">\n",
            esc(name),
            verdicts.len() + usize::from(*interrupted)
        ));
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
            if v.passed {
                x.push_str(&format!("<system-out>{}</system-out>", esc(&v.summary)));
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
