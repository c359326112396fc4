//! The `fakehub` command.

mod input;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fakehub",
    version,
    about = "A fake Azure IoT Hub with fault injection and a time-warp"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a hub until Ctrl-C or SIGTERM, writing ca.pem, events.jsonl and connections.jsonl.
    Serve {
        /// The hub configuration (YAML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Write a CA for devices to trust (ca.pem) and its key (ca-key.pem, for serve's ca_dir).
    Certs {
        #[arg(long)]
        out: PathBuf,
    },
}

fn init_logging() {
    // Quiet by default; FAKEHUB_LOG=debug (an EnvFilter) for more. rumqttd logs routine events at
    // ERROR, so it stays off unless named explicitly.
    let filter = std::env::var("FAKEHUB_LOG").unwrap_or_else(|_| "warn".to_owned());
    let filter = if filter.contains("rumqttd") {
        filter
    } else {
        format!("{filter},rumqttd=off")
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fakehub: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { config } => {
                let config = serve::ServeConfig::load(&config)?;
                serve::serve(config).await
            }
            Command::Certs { out } => serve::certs(&out),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fakehub: {e:#}");
            ExitCode::from(2)
        }
    }
}
