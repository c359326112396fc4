//! What `fakehub explore` shows while it runs: on a terminal one status line rewritten in place
//! (at most ten times a second), elsewhere a line every few seconds and at each turn of events.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use super::Event;

/// Prints exploration events on stderr.
pub struct Terminal {
    tty: bool,
    last: Option<Instant>,
    /// The status line is showing (a newline ends it before anything else is printed).
    open: bool,
}

impl Default for Terminal {
    fn default() -> Self {
        Terminal {
            tty: std::io::stderr().is_terminal(),
            last: None,
            open: false,
        }
    }
}

/// `2h 5m`, `41s`: virtual times, to the second.
pub fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

impl Terminal {
    fn due(&mut self) -> bool {
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        let due = self.last.is_none_or(|t| t.elapsed() >= every);
        if due {
            self.last = Some(Instant::now());
        }
        due
    }

    /// A status line: rewritten in place on a terminal, a line of its own elsewhere.
    fn status(&mut self, text: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{text}");
            self.open = true;
        } else {
            let _ = writeln!(err, "{text}");
        }
        let _ = err.flush();
    }

    /// A line that stays.
    fn line(&mut self, text: &str) {
        let mut err = std::io::stderr().lock();
        if self.open {
            let _ = write!(err, "\r\x1b[2K");
            self.open = false;
        }
        let _ = writeln!(err, "{text}");
    }

    /// Show one event.
    pub fn show(&mut self, e: Event<'_>) {
        match e {
            Event::Tried {
                runs,
                virtual_time,
                elapsed,
            } => {
                if self.due() {
                    let rate = runs as f64 / elapsed.as_secs_f64().max(1e-9);
                    self.status(&format!(
                        "explore: {runs} schedules ({rate:.1}/s), {} of virtual time, no failure yet",
                        fmt_duration(virtual_time)
                    ));
                }
            }
            Event::Rejected { index, target } => self.line(&format!(
                "explore: schedule {index} breaks {}, but so does the well-behaved sample device: not counted",
                target.rule
            )),
            Event::Found {
                index,
                steps,
                target,
            } => {
                self.line(&format!(
                    "explore: schedule {index} ({steps} steps) breaks {}:\n  {}",
                    target.expectation,
                    target.verdict.summary
                ));
                self.last = None;
            }
            Event::Shrunk {
                runs,
                steps,
                length,
            } => {
                if self.due() {
                    self.status(&format!(
                        "shrinking: {steps} steps, {} of virtual time, after {runs} runs",
                        fmt_duration(length)
                    ));
                }
            }
        }
    }

    /// End the status line.
    pub fn finish(&mut self) {
        if self.open {
            eprintln!();
            self.open = false;
        }
    }
}
