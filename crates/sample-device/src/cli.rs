//! The reference device as a process (`sample-device`, or `fakehub sample-device`).
//!
//! Reads `FAKEHUB_CONNECTION_STRING` and `FAKEHUB_CA_FILE`, and keeps time with the process's own
//! clocks (under the runner's time preload, the hub's). Prints what it does as JSON lines; SIGTERM
//! or Ctrl-C stops it (with a DISCONNECT unless `--bug no-disconnect`). Exit status 2 for bad setup;
//! with `--exit-after`, the process ends by itself as a crashing application would.

use std::process::ExitCode;
use std::time::Duration;

use crate::{Bug, ConnectionString, Device, DeviceOptions};
use clap::Parser;
use fakehub_protocol::clock::DeviceClock;
use tokio_util::sync::CancellationToken;

/// The device's command line.
#[derive(Parser, Debug)]
#[command(name = "sample-device", about = "The fakehub reference device")]
pub struct Args {
    /// Switch off one good behaviour (repeatable): no-token-renewal, stale-token, no-backoff,
    /// no-jitter, lose-inflight, no-resubscribe, no-disconnect, huge-keepalive, ignore-methods,
    /// no-c2d-ack, ignore-desired.
    #[arg(long = "bug", value_parser = |s: &str| s.parse::<Bug>())]
    bugs: Vec<Bug>,
    /// Seconds between telemetry messages (device time).
    #[arg(long, default_value_t = 60.0)]
    telemetry_interval: f64,
    /// MQTT keep-alive, seconds.
    #[arg(long, default_value_t = 60)]
    keep_alive: u16,
    /// SAS token lifetime, seconds.
    #[arg(long, default_value_t = 3600)]
    token_ttl: u64,
    /// Seed for the backoff jitter.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// End the process after this many seconds (device time), at once and without DISCONNECT, as
    /// an application that crashes or exits by mistake (the kernel closes its socket).
    #[arg(long)]
    exit_after: Option<f64>,
    /// The exit status for `--exit-after`.
    #[arg(long, default_value_t = 3)]
    exit_code: u8,
}

fn fail(msg: String) -> ExitCode {
    eprintln!("sample-device: {msg}");
    ExitCode::from(2)
}

/// Run the device with these arguments (the program name first), until SIGTERM or Ctrl-C.
pub fn main_with_args(argv: impl IntoIterator<Item = String>) -> ExitCode {
    let args = match Args::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    let Ok(conn) = std::env::var("FAKEHUB_CONNECTION_STRING") else {
        return fail("FAKEHUB_CONNECTION_STRING is not set".into());
    };
    let conn = match ConnectionString::parse(&conn) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let Ok(ca_file) = std::env::var("FAKEHUB_CA_FILE") else {
        return fail("FAKEHUB_CA_FILE is not set".into());
    };
    let ca = match std::fs::read_to_string(&ca_file) {
        Ok(c) => c,
        Err(e) => return fail(format!("{ca_file}: {e}")),
    };
    // A process reads its own clocks: under the runner's time preload they are the hub's.
    let clock = DeviceClock::Real;
    if !(args.telemetry_interval.is_finite() && args.telemetry_interval > 0.0) {
        return fail("--telemetry-interval must be positive".into());
    }
    let exit_after = match args.exit_after {
        None => None,
        Some(s) => match Duration::try_from_secs_f64(s) {
            Ok(d) => Some(d),
            Err(_) => return fail("--exit-after must be a number of seconds, 0 or more".into()),
        },
    };
    let opts = DeviceOptions {
        telemetry_interval: Duration::from_secs_f64(args.telemetry_interval),
        keep_alive: args.keep_alive,
        token_ttl: Duration::from_secs(args.token_ttl),
        seed: args.seed,
        bugs: args.bugs.into_iter().collect(),
        ..DeviceOptions::default()
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("runtime: {e}")),
    };
    runtime.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let device = match Device::new(conn, &ca, clock, opts) {
            Ok(d) => d.with_events(tx),
            Err(e) => return fail(e.to_string()),
        };
        let stop = CancellationToken::new();
        let printer = tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                if let Ok(line) = serde_json::to_string(&e) {
                    println!("{line}");
                }
            }
        });
        let signal_stop = stop.clone();
        tokio::spawn(async move {
            fakehub_protocol::shutdown_signal().await;
            signal_stop.cancel();
        });
        let sudden_end = async {
            match exit_after {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = sudden_end => {
                eprintln!("sample-device: exiting with status {} (--exit-after)", args.exit_code);
                // At once: no DISCONNECT, no flush of what is in flight.
                std::process::exit(i32::from(args.exit_code));
            }
            () = device.run(stop) => {}
        }
        let _ = printer.await;
        ExitCode::SUCCESS
    })
}
