//! The reference device as a process (`sample-device`, or `fakehub sample-device`).
//!
//! Reads `FAKEHUB_CONNECTION_STRING` and `FAKEHUB_CA_FILE` — or, to register with the Device
//! Provisioning Service first, `FAKEHUB_DPS_HOST` (`host[:port]`, port 8883 by default),
//! `FAKEHUB_DPS_ID_SCOPE`, `FAKEHUB_DPS_REGISTRATION_ID` and `FAKEHUB_DPS_KEY` (the device's key:
//! individual, or derived from its group's). With `FAKEHUB_CERT_FILE` and `FAKEHUB_KEY_FILE` (PEM)
//! it authenticates with that client certificate (the connection string then says `x509=true`).
//! It keeps time with the process's own
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
    /// no-c2d-ack, ignore-desired, ignore-retry-after, short-dps-timeout, no-reprovision.
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
    /// With provisioning: register again after this many failed hub connects in a row (0: never).
    #[arg(long, default_value_t = 3)]
    reprovision_after: u32,
}

/// `FAKEHUB_DPS_*`, when the device is to provision: `None` without `FAKEHUB_DPS_ID_SCOPE`.
fn provisioning_from_env() -> Result<Option<crate::Provisioning>, String> {
    let Ok(id_scope) = std::env::var("FAKEHUB_DPS_ID_SCOPE") else {
        return Ok(None);
    };
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let endpoint = var("FAKEHUB_DPS_HOST")?;
    let (host, port) = match endpoint.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (
            h.to_owned(),
            p.parse()
                .map_err(|_| format!("FAKEHUB_DPS_HOST has a bad port: {endpoint}"))?,
        ),
        _ => (endpoint, 8883),
    };
    Ok(Some(crate::Provisioning {
        host,
        port,
        id_scope,
        registration_id: var("FAKEHUB_DPS_REGISTRATION_ID")?,
        key: var("FAKEHUB_DPS_KEY")?,
    }))
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
    let provisioning = match provisioning_from_env() {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let conn = match (&provisioning, std::env::var("FAKEHUB_CONNECTION_STRING")) {
        (Some(_), _) => None,
        (None, Ok(conn)) => match ConnectionString::parse(&conn) {
            Ok(c) => Some(c),
            Err(e) => return fail(e.to_string()),
        },
        (None, Err(_)) => {
            return fail(
                "FAKEHUB_CONNECTION_STRING is not set (nor FAKEHUB_DPS_ID_SCOPE to provision)"
                    .into(),
            )
        }
    };
    let Ok(ca_file) = std::env::var("FAKEHUB_CA_FILE") else {
        return fail("FAKEHUB_CA_FILE is not set".into());
    };
    let ca = match std::fs::read_to_string(&ca_file) {
        Ok(c) => c,
        Err(e) => return fail(format!("{ca_file}: {e}")),
    };
    // An X.509 device: its certificate and key (the key is never printed).
    let certificate = match (
        std::env::var("FAKEHUB_CERT_FILE"),
        std::env::var("FAKEHUB_KEY_FILE"),
    ) {
        (Ok(cert), Ok(key)) => {
            let read =
                |path: &str| std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"));
            match (read(&cert), read(&key)) {
                (Ok(cert_pem), Ok(key_pem)) => Some(crate::ClientCertificate { cert_pem, key_pem }),
                (Err(e), _) | (_, Err(e)) => return fail(e),
            }
        }
        (Err(_), Err(_)) => None,
        _ => return fail("FAKEHUB_CERT_FILE and FAKEHUB_KEY_FILE go together".into()),
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
        reprovision_after: args.reprovision_after,
        certificate,
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
        let made = match (conn, provisioning) {
            (Some(conn), _) => Device::new(conn, &ca, clock, opts),
            (None, Some(p)) => Device::provisioned(p, &ca, clock, opts),
            (None, None) => return fail("no connection string and no provisioning".into()),
        };
        let device = match made {
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
