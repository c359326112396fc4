//! What the `fakehub` command prints. `println!` panics when its reader has gone (`fakehub schema |
//! head`); these macros treat a closed pipe as the end of the output instead: the rest is dropped
//! quietly and the command goes on (a run still writes its reports).

use std::fmt::Arguments;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
static STDERR_GONE: AtomicBool = AtomicBool::new(false);

/// Write to standard output unless its reader is gone.
pub fn stdout(args: Arguments<'_>) {
    write_to(&mut std::io::stdout().lock(), &STDOUT_GONE, args);
}

/// Write to standard error unless its reader is gone.
pub fn stderr(args: Arguments<'_>) {
    write_to(&mut std::io::stderr().lock(), &STDERR_GONE, args);
}

fn write_to(w: &mut impl Write, gone: &AtomicBool, args: Arguments<'_>) {
    if gone.load(Ordering::Relaxed) {
        return;
    }
    if w.write_fmt(args).and_then(|()| w.flush()).is_err() {
        // A closed pipe (EPIPE) or any other failure to print: stop printing there.
        gone.store(true, Ordering::Relaxed);
    }
}

/// `println!` to standard output that ends quietly at a closed pipe.
#[macro_export]
macro_rules! say {
    () => { $crate::output::stdout(format_args!("\n")) };
    ($($t:tt)*) => { $crate::output::stdout(format_args!("{}\n", format_args!($($t)*))) };
}

/// `print!` to standard output that ends quietly at a closed pipe.
#[macro_export]
macro_rules! say_part {
    ($($t:tt)*) => { $crate::output::stdout(format_args!($($t)*)) };
}

/// `eprintln!` that ends quietly at a closed pipe.
#[macro_export]
macro_rules! tell {
    ($($t:tt)*) => { $crate::output::stderr(format_args!("{}\n", format_args!($($t)*))) };
}

/// Write a file only its owner may read (mode 0600: keys, connection strings, certificates' keys).
pub fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

/// An error and its causes on one line, each text once: many errors already say their cause, and
/// `{:#}` would repeat it ("…(os error 98): Address already in use (os error 98)").
pub fn describe(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_already_said_is_not_repeated() {
        let io = std::io::Error::from_raw_os_error(98);
        let e = anyhow::Error::new(io).context(format!(
            "cannot listen on 127.0.0.1:8883: {}",
            std::io::Error::from_raw_os_error(98)
        ));
        let text = super::describe(&e);
        assert_eq!(text.matches("os error 98").count(), 1, "{text}");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::describe(&e), "outer: inner");
    }
}
