//! The `fakehub` command.

// The doc comments below are clap's help text, plain text where `<name>` is not an HTML tag.
#![allow(rustdoc::invalid_html_tags)]

use fakehub_scenario::{bench, explore, junit, report, runner, scenario, serve};
use fakehub_scenario::{say, say_part, tell};

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of the C library's allocator: a fleet run allocates and frees millions of
/// small objects (events, connections), on several threads; glibc's malloc spent a third of the
/// run's CPU and kept what the hub's threads freed from the judging that follows (see
/// docs/ARCHITECTURE.md, "Dependencies").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Generate fault schedules for a scenario's hub, devices and expectations, run each, stop at
    /// the first that breaks an expectation, shrink it to a minimal one and write it as
    /// DIR/<name>-minimal.yaml: exit 1 when one was found (its path is printed), 0 when none broke
    /// anything within the runs or budget, 2 for bad input or when interrupted first.
    Explore {
        /// The scenario file (its timeline, if any, is replaced by the generated ones).
        scenario: PathBuf,
        /// At most this many schedules.
        #[arg(long, default_value_t = 200)]
        runs: usize,
        /// The seed schedules are drawn from (default: the scenario's, else a new one, printed).
        #[arg(long)]
        seed: Option<u64>,
        /// At most this much wall time for the search, e.g. `30s`, `10m`.
        #[arg(long, value_parser = humantime::parse_duration)]
        budget: Option<std::time::Duration>,
        /// Give every sample device this bug (repeatable); a schedule then counts only when the
        /// well-behaved device passes the rule the bug breaks.
        #[arg(long = "sample-bug")]
        sample_bugs: Vec<String>,
        /// Where the minimal scenario is written.
        #[arg(long, default_value = "fakehub-out/explore")]
        out: PathBuf,
    },
    /// Check scenario files without running them.
    Validate {
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
    },
    /// Print the JSON Schema of the scenario format.
    Schema,
    /// Read IoT Hub Connections logs (Log Analytics CSV/JSON, storage blobs, Event Hub bodies and
    /// Capture files, connections.jsonl), diagnose them, and write diagnosis.md, diagnosis.html
    /// and one scenario per finding: exit 0, or 2 for unreadable input.
    Import {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where to write (default fakehub-out/field).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Put a field log and a reproduction's records (its output directory) side by side: exit 0
    /// when the reproduction matches, 1 when it does not, 2 for unreadable input.
    Compare { field: PathBuf, out_dir: PathBuf },
    /// Run a hub until Ctrl-C or SIGTERM, writing ca.pem, events.jsonl and connections.jsonl, with
    /// the IoT Hub service REST API and the control API on HTTPS (see docs/SERVICE-API.md).
    Serve {
        /// The hub configuration (YAML).
        #[arg(long)]
        config: PathBuf,
        /// Do not start the service REST API and control API (HTTPS on `service_listen`).
        #[arg(long)]
        no_service_api: bool,
    },
    /// Write a CA for devices to trust (ca.pem) and its key (ca-key.pem, for serve's ca_dir), or
    /// with --device a device certificate.
    Certs {
        #[arg(long)]
        out: PathBuf,
        /// Issue a device certificate (ID.pem, ID.key) with CN = ID from the CA in OUT (made
        /// first if missing), for a device registered with `x509: {ca: true}`.
        #[arg(long)]
        device: Option<String>,
        /// With --device: a self-signed certificate instead (register its thumbprint).
        #[arg(long, requires = "device")]
        self_signed: bool,
    },
    /// Measure fakehub and mosquitto side by side with the same load tool (TLS devices over
    /// loopback): connection storm, held connections and memory, QoS 1 throughput, CPU and
    /// latency, and a server kill with every device coming back; with --fleet, an in-process
    /// fleet scenario's wall time and peak memory. See docs/BENCH.md.
    Bench(bench::BenchOptions),
    /// The benchmark's bare peer: a tokio-rustls acceptor that answers just enough MQTT (started
    /// by `fakehub bench`).
    #[command(hide = true)]
    BenchPeer {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
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
    // Every connection and device process costs descriptors: use all the system allows.
    if let Err(e) = fakehub::descriptors::raise_limit() {
        tracing::debug!(error = %e, "the descriptor limit could not be raised");
    }
    if let Command::Explore {
        scenario,
        runs,
        seed,
        budget,
        sample_bugs,
        out,
    } = cli.command
    {
        for b in &sample_bugs {
            if let Err(e) = b.parse::<sample_device::Bug>() {
                tell!("fakehub: --sample-bug: {e}");
                return ExitCode::from(2);
            }
        }
        let args = ExploreArgs {
            runs,
            seed,
            budget,
            sample_bugs,
            out,
        };
        return match explore_command(&scenario, args) {
            Ok(code) => code,
            Err(e) => {
                tell!("fakehub: {}", fakehub_scenario::output::describe(&e));
                ExitCode::from(2)
            }
        };
    }
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
                tell!("fakehub: --sample-bug: {e}");
                return ExitCode::from(2);
            }
        }
        let opts = runner::RunOptions {
            seed,
            sample_bugs,
            draw: true,
        };
        return match run(&scenarios, out.as_deref(), opts) {
            Ok(code) => code,
            Err(e) => {
                tell!("fakehub: {}", fakehub_scenario::output::describe(&e));
                ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            tell!("fakehub: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve {
                config,
                no_service_api,
            } => {
                let config = serve::ServeConfig::load(&config)?;
                serve::serve(config, !no_service_api)
                    .await
                    .map(|()| ExitCode::SUCCESS)
            }
            Command::Certs {
                out,
                device,
                self_signed,
            } => serve::certs(&out, device.as_deref(), self_signed).map(|()| ExitCode::SUCCESS),
            Command::Bench(opts) => bench::run(&opts).await.map(|_| ExitCode::SUCCESS),
            Command::BenchPeer { listen, cert, key } => bench::bare::serve(listen, &cert, &key)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Schema => {
                say!("{}", serde_json::to_string_pretty(&scenario::schema())?);
                Ok(ExitCode::SUCCESS)
            }
            Command::Import { files, out } => field_import(
                &files,
                out.as_deref().unwrap_or(Path::new("fakehub-out/field")),
            ),
            Command::Compare { field, out_dir } => field_compare(&field, &out_dir),
            Command::Validate { scenarios } => {
                for path in &scenarios {
                    let s = scenario::load(path)?;
                    say!(
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
            Command::Run { .. } | Command::Explore { .. } | Command::SampleDevice { .. } => {
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            tell!("fakehub: {}", fakehub_scenario::output::describe(&e));
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
    let mut failed = false;
    let mut unjudged = false;
    let mut interrupted = false;
    for s in &loaded {
        let dir = match out {
            Some(base) => scenario::out_dir(base, s, several),
            None => Path::new("fakehub-out").join(&s.name),
        };
        let started = std::time::Instant::now();
        let outcome = runner::run(s, &dir, &opts)?;
        let log = &outcome.log;
        let result = junit::ScenarioResult {
            name: s.name.clone(),
            verdicts: outcome.verdicts.clone(),
            interrupted: outcome.interrupted,
            clocks: log.clock_modes(),
        };
        // The report and junit.xml are written side by side (each is a second or so for a fleet).
        std::thread::scope(|scope| -> anyhow::Result<()> {
            let junit = scope.spawn(|| {
                std::fs::write(
                    dir.join("junit.xml"),
                    junit::render(std::slice::from_ref(&result)),
                )
            });
            std::fs::write(
                dir.join("report.html"),
                match &outcome.drawing {
                    Some(drawing) => report::render_drawn(&s.name, log, drawing, &outcome.verdicts),
                    None => report::render_html(&s.name, log, &outcome.verdicts),
                },
            )?;
            match junit.join() {
                Ok(written) => Ok(written?),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })?;
        say!("\n{} — {}", s.name, outcome.mark());
        for (text, v) in &outcome.verdicts {
            say!("  {text}\n    {v}");
        }
        say!(
            "  ({:.1}s, {}; report: {})",
            started.elapsed().as_secs_f64(),
            outcome.regime.describe(),
            dir.join("report.html").display()
        );
        failed |= outcome.failed();
        unjudged |= !outcome.passed();
        interrupted |= outcome.interrupted;
        all.push(result);
        // A fleet's log is millions of events: freeing them one by one took 1.5 s at the end of a
        // 100,000-device run. The last outcome is left to the process's exit, which gives the
        // memory back at once; an earlier one is freed beside the next run.
        if interrupted || std::ptr::eq(s, loaded.last().unwrap_or(s)) {
            std::mem::forget(outcome);
            break;
        }
        std::thread::spawn(move || drop(outcome));
    }
    if several {
        if let Some(base) = out {
            std::fs::write(base.join("junit.xml"), junit::render(&all))?;
        }
    }
    // 2 when the run was interrupted (its verdicts judge a cut-short run); 1 when a rule was
    // broken; 2 when nothing was broken but some rule could not be judged (not a pass a release can
    // rely on); 0 when every rule passed.
    Ok(if interrupted {
        ExitCode::from(2)
    } else if failed {
        ExitCode::from(1)
    } else if unjudged {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// `fakehub explore`'s options.
struct ExploreArgs {
    runs: usize,
    seed: Option<u64>,
    budget: Option<std::time::Duration>,
    sample_bugs: Vec<String>,
    out: PathBuf,
}

/// A token SIGINT, SIGTERM and SIGHUP cancel, for the whole exploration (each run's runtime is
/// short-lived; this listener outlives them).
fn stop_on_signals() -> anyhow::Result<tokio_util::sync::CancellationToken> {
    let stop = tokio_util::sync::CancellationToken::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let token = stop.clone();
    // Signal handlers are registered before this returns, so no signal is missed.
    let (ready, registered) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("fakehub-signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listening = tokio::spawn(fakehub::shutdown_signal());
                tokio::task::yield_now().await;
                let _ = ready.send(());
                let _ = listening.await;
                token.cancel();
            })
        })?;
    let _ = registered.recv();
    Ok(stop)
}

/// `fakehub explore`: search, shrink, write; the exit status.
fn explore_command(path: &Path, args: ExploreArgs) -> anyhow::Result<ExitCode> {
    let base = scenario::load(path)?;
    if !base.timeline.is_empty() {
        tell!(
            "fakehub: explore replaces the {} timeline steps of {} with generated schedules",
            base.timeline.len(),
            path.display()
        );
    }
    if base.expect.is_empty() {
        anyhow::bail!(
            "{}: no expectations to break (explore looks for a schedule that fails one)",
            path.display()
        );
    }
    let seed = args.seed.or(base.seed).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() ^ u64::from(d.subsec_nanos()))
            .unwrap_or(1)
    });
    let regime = runner::Regime::of(&base);
    tell!(
        "fakehub: exploring '{}' with seed {seed}: up to {} schedules{}, {}",
        base.name,
        args.runs,
        args.budget
            .map(|b| format!(" or {}", humantime::format_duration(b)))
            .unwrap_or_default(),
        regime.describe()
    );
    let opts = explore::Options {
        runs: args.runs,
        seed,
        budget: args.budget,
        sample_bugs: args.sample_bugs.clone(),
        scratch: Some(args.out.join("runs")),
        stop: Some(stop_on_signals()?),
        ..Default::default()
    };
    let mut terminal = explore::progress::Terminal::default();
    let started = std::time::Instant::now();
    let report = explore::explore(&base, &opts, &mut |e| terminal.show(e))?;
    terminal.finish();
    let _ = std::fs::remove_dir(args.out.join("runs"));
    let rate = report.runs as f64 / report.search_time.as_secs_f64().max(1e-9);
    let tried = format!(
        "{} schedules, {} of virtual time, in {:.1}s ({rate:.1} schedules/s)",
        report.runs,
        explore::progress::fmt_duration(report.virtual_time),
        report.search_time.as_secs_f64()
    );
    if !report.rejected.is_empty() {
        say!(
            "{} schedules broke a rule the well-behaved sample device breaks too (not counted)",
            report.rejected.len()
        );
    }
    let Some(found) = report.found else {
        say!("no failure: {tried}");
        return Ok(if report.interrupted {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        });
    };
    say!(
        "schedule {} broke {} after {tried}",
        found.index,
        found.target.expectation
    );
    say!(
        "shrunk from {} steps to {} in {} runs ({:.1}s){}; total {:.1}s",
        found.original.timeline.len(),
        found.minimal.timeline.len(),
        found.shrink_runs,
        found.shrink_time.as_secs_f64(),
        if report.interrupted {
            " — interrupted: written as far as it got"
        } else {
            ""
        },
        started.elapsed().as_secs_f64()
    );
    say!("{}", found.target.verdict);
    let provenance = explore::write::Provenance {
        source: path.display().to_string(),
        seed,
        index: found.index,
        steps_before: found.original.timeline.len(),
        shrink_runs: found.shrink_runs,
        sample_bugs: args.sample_bugs,
    };
    let written = explore::write_minimal(&args.out, &base, &found, &provenance)?;
    say!("{}", written.display());
    Ok(ExitCode::from(1))
}

/// Print located import errors; the exit status for bad input.
fn import_errors(errors: &[fakehub_field::FieldError]) -> ExitCode {
    for e in errors {
        tell!("fakehub: {e}");
    }
    ExitCode::from(2)
}

/// `fakehub import`: read, diagnose, write the diagnosis and one checked scenario per finding.
fn field_import(files: &[PathBuf], out: &Path) -> anyhow::Result<ExitCode> {
    let import = match fakehub_field::import_files(files) {
        Ok(i) => i,
        Err(errors) => return Ok(import_errors(&errors)),
    };
    let hubs = fakehub_field::diagnose(&import);
    let mut written = Vec::new();
    for (i, hub) in hubs.iter().enumerate() {
        for w in fakehub_field::scenario::write_all(hub) {
            // Every written scenario goes through the same checks as `fakehub validate`.
            scenario::parse(&out.join(&w.file_name), &w.yaml)?;
            written.push((i, w));
        }
    }
    std::fs::create_dir_all(out)?;
    for (_, w) in &written {
        std::fs::write(out.join(&w.file_name), &w.yaml)?;
    }
    std::fs::write(
        out.join("diagnosis.md"),
        fakehub_field::report::markdown(&import, &hubs, &written),
    )?;
    std::fs::write(
        out.join("diagnosis.html"),
        fakehub_field::report::html(&import, &hubs, &written),
    )?;
    say_part!("{}", fakehub_field::report::import_summary(&import));
    say_part!("{}", fakehub_field::report::text(&hubs, &written));
    say!(
        "\nwrote diagnosis.md, diagnosis.html and {} scenario(s) to {}",
        written.len(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `fakehub compare`: the field's findings next to a reproduction's.
fn field_compare(field: &Path, out_dir: &Path) -> anyhow::Result<ExitCode> {
    let field_import = match fakehub_field::import_files(&[field]) {
        Ok(i) => i,
        Err(errors) => return Ok(import_errors(&errors)),
    };
    let repro_file = if out_dir.is_dir() {
        out_dir.join("connections.jsonl")
    } else {
        out_dir.to_owned()
    };
    let repro_import = match fakehub_field::import_files(&[&repro_file]) {
        Ok(i) => i,
        Err(errors) => return Ok(import_errors(&errors)),
    };
    let a = fakehub_field::diagnose(&field_import);
    let b = fakehub_field::diagnose(&repro_import);
    let c = fakehub_field::compare::compare(&a, &b);
    say_part!("{}", fakehub_field::compare::render(&c));
    Ok(if c.matches() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
