//! The `fakehub` command.

use fakehub_scenario::{junit, report, runner, scenario, serve};

use std::path::{Path, PathBuf};
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
    /// Run scenarios: exit 0 when every expectation holds, 1 when one fails, 2 for bad input.
    Run {
        /// Scenario files (YAML).
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        /// Output directory (default fakehub-out/<scenario name>): events.jsonl, connections.jsonl,
        /// junit.xml, report.html, devices/<id>.log.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Seed for fault selection and the sample devices' jitter.
        #[arg(long)]
        seed: Option<u64>,
        /// Give every in-process sample device this bug too (repeatable), e.g. to see a scenario
        /// catch it.
        #[arg(long = "sample-bug")]
        sample_bugs: Vec<String>,
    },
    /// Check scenario files without running them.
    Validate {
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
    },
    /// Print the JSON Schema of the scenario format.
    Schema,
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
    /// Run the bundled sample device (as `run: [sample-device, …]` in scenarios does).
    #[command(disable_help_flag = true)]
    SampleDevice {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn init_logging() {
    // Quiet by default; FAKEHUB_LOG=debug (an EnvFilter) for more.
    let filter = std::env::var("FAKEHUB_LOG").unwrap_or_else(|_| "warn".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::SampleDevice { args } = cli.command {
        let argv = std::iter::once("sample-device".to_owned()).chain(args);
        return sample_device::cli::main_with_args(argv);
    }
    init_logging();
    // Each scenario runs on a runtime of its own, chosen by how its devices keep time.
    if let Command::Run {
        scenarios,
        out,
        seed,
        sample_bugs,
    } = cli.command
    {
        for b in &sample_bugs {
            if let Err(e) = b.parse::<sample_device::Bug>() {
                eprintln!("fakehub: --sample-bug: {e}");
                return ExitCode::from(2);
            }
        }
        let opts = runner::RunOptions { seed, sample_bugs };
        return match run(&scenarios, out.as_deref(), opts) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("fakehub: {e:#}");
                ExitCode::from(2)
            }
        };
    }
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
                serve::serve(config).await.map(|()| ExitCode::SUCCESS)
            }
            Command::Certs { out } => serve::certs(&out).map(|()| ExitCode::SUCCESS),
            Command::Schema => {
                println!("{}", serde_json::to_string_pretty(&scenario::schema())?);
                Ok(ExitCode::SUCCESS)
            }
            Command::Validate { scenarios } => {
                for path in &scenarios {
                    let s = scenario::load(path)?;
                    println!(
                        "{}: ok ({}: {} devices, {} steps, {} expectations)",
                        path.display(),
                        s.name,
                        s.devices
                            .iter()
                            .map(|d| d.count.unwrap_or(1))
                            .sum::<usize>(),
                        s.timeline.len(),
                        s.expect.len()
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Run { .. } | Command::SampleDevice { .. } => Ok(ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fakehub: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Check every scenario first (a bad file runs nothing), then run them in order.
fn run(
    paths: &[PathBuf],
    out: Option<&Path>,
    opts: runner::RunOptions,
) -> anyhow::Result<ExitCode> {
    let mut loaded = Vec::new();
    for p in paths {
        loaded.push(scenario::load(p)?);
    }
    let several = loaded.len() > 1;
    let mut all = Vec::new();
    let mut passed = true;
    let mut interrupted = false;
    for s in &loaded {
        let dir = match out {
            Some(base) => scenario::out_dir(base, s, several),
            None => Path::new("fakehub-out").join(&s.name),
        };
        let started = std::time::Instant::now();
        let outcome = runner::run(s, &dir, &opts)?;
        let log_text = std::fs::read_to_string(dir.join("events.jsonl"))?;
        let log = fakehub_assert::Log::parse_jsonl(&log_text).map_err(anyhow::Error::msg)?;
        std::fs::write(
            dir.join("report.html"),
            report::render_html(&s.name, &log, &outcome.verdicts),
        )?;
        std::fs::write(
            dir.join("junit.xml"),
            junit::render(&[junit::ScenarioResult {
                name: s.name.clone(),
                verdicts: outcome.verdicts.clone(),
                interrupted: outcome.interrupted,
            }]),
        )?;
        println!(
            "\n{} — {}",
            s.name,
            if outcome.passed() { "PASS" } else { "FAIL" }
        );
        for (text, v) in &outcome.verdicts {
            println!("  {text}\n    {v}");
        }
        println!(
            "  ({:.1}s, {}; report: {})",
            started.elapsed().as_secs_f64(),
            outcome.regime.describe(),
            dir.join("report.html").display()
        );
        passed &= outcome.passed();
        interrupted |= outcome.interrupted;
        all.push(junit::ScenarioResult {
            name: s.name.clone(),
            verdicts: outcome.verdicts,
            interrupted: outcome.interrupted,
        });
        if interrupted {
            break;
        }
    }
    if several {
        if let Some(base) = out {
            std::fs::write(base.join("junit.xml"), junit::render(&all))?;
        }
    }
    Ok(if interrupted {
        ExitCode::from(2)
    } else if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
