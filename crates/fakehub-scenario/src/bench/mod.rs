//! `fakehub bench`: fakehub and mosquitto measured in the same run with the same load tool
//! ([`load`]: real TLS, MQTT 3.1.1 CONNECT with SAS tokens, QoS 1 telemetry), each server a
//! process of its own ([`server`]) so that its memory and CPU are read from `/proc`; and, with
//! `--fleet`, an in-process fleet scenario's wall time and peak memory. See docs/BENCH.md.

pub mod bare;
pub mod host;
pub mod load;
pub mod server;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use load::{Held, Target};
use server::{Certificates, Fleet, Kind, Server};

/// The benchmark's sizes and where it writes.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchOptions {
    /// Devices in the connection storm, held, then dropped at once (the server is killed) and
    /// re-admitted (0: measure no server, only `--fleet`).
    #[arg(long, default_value_t = 10_000)]
    pub devices: usize,
    /// Connection attempts the load tool has under way at once (mosquitto listens with a backlog
    /// of 100: more than that at once measures its SYN retries).
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Devices publishing QoS 1 telemetry (connected beside the held ones).
    #[arg(long, default_value_t = 100)]
    pub publishers: usize,
    /// Unacknowledged QoS 1 messages each publisher may have.
    #[arg(long, default_value_t = 10)]
    pub inflight: usize,
    /// The fixed rates of the publishing runs after the half-rate one, messages/s: every server at
    /// the same loads (the half-rate run loads each at half of its own maximum).
    #[arg(
        long,
        alias = "fixed-rate",
        value_delimiter = ',',
        default_value = "10000,50000"
    )]
    pub fixed_rates: Vec<f64>,
    /// Measure every server this many times, interleaved (fakehub, mosquitto, bare, fakehub, …),
    /// and print the median of each figure.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// How long each publishing run lasts, e.g. `3s`.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub publish_for: Duration,
    /// The servers to measure, in this order (`mosquitto-nodelay`: the same mosquitto with
    /// `set_tcp_nodelay true`, answering at once as fakehub does; `bare`: a tokio-rustls acceptor
    /// that answers just enough MQTT).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fakehub,mosquitto,mosquitto-nodelay,bare"
    )]
    pub servers: Vec<Kind>,
    /// The mosquitto binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    pub mosquitto: PathBuf,
    /// A line to add to mosquitto's configuration (repeatable; both mosquitto servers get it), e.g.
    /// `--mosquitto-conf "max_inflight_messages 10"`.
    #[arg(long = "mosquitto-conf", value_name = "LINE")]
    pub mosquitto_conf: Vec<String>,
    /// Start each server under this command, e.g. `--wrap heaptrack` or `--wrap "perf record -g
    /// --"` (to profile it under the benchmark's load; the figures then include the wrapper).
    #[arg(long)]
    pub wrap: Option<String>,
    /// Where configurations, certificates, server logs and the fleet run's output go.
    #[arg(long, default_value = "fakehub-out/bench")]
    pub out: PathBuf,
    /// Also run this scenario (e.g. scenarios/bench/fleet-100k.yaml) with `fakehub run` and report
    /// its wall time and peak RSS.
    #[arg(long)]
    pub fleet: Option<PathBuf>,
}

/// One server's figures.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub storm_per_s: f64,
    /// Connection attempts of the storm that failed and were made again after a backoff (each
    /// waits up to a second: a few of them set the storm's last CONNACK).
    pub storm_retries: u64,
    /// The server's CPU over the storm ÷ connections held: a full TLS handshake, CONNECT and
    /// CONNACK each.
    pub cpu_per_connect: Duration,
    /// The load tool's own CPU over the storm ÷ connections held (the storm shares the machine's
    /// cores with it).
    pub load_cpu_per_connect: Duration,
    pub held: usize,
    /// Why devices were not held (the first refusal), if any were not.
    pub refused: Option<String>,
    pub rss_held: u64,
    pub bytes_per_held: f64,
    pub qos1_per_s: f64,
    pub cpu_per_msg_unpaced: Duration,
    pub cpu_per_msg_half: Duration,
    /// One run per fixed rate, in `--fixed-rates` order.
    pub fixed: Vec<Paced>,
    pub half_rate: f64,
    pub puback_p99_half: Duration,
    /// The share of the machine's CPU time the hypervisor stole over the paced runs (half rate
    /// and fixed rates), %.
    pub stolen_paced: f64,
    pub all_back: Option<Duration>,
}

/// A publishing run at a fixed rate.
#[derive(Clone, Debug, Default)]
pub struct Paced {
    pub cpu_per_msg: Duration,
    /// The load tool's own CPU per message over the same run: what the server's way of answering
    /// costs its clients (loopback charges the receiving side's TCP work to the sender, and a
    /// server that leaves answers to Nagle's algorithm sends them when the client's next segment
    /// acknowledges the last, on the client's time).
    pub load_cpu_per_msg: Duration,
    /// Context switches of the server's threads per message: how often a thread went to sleep and
    /// was woken again for each message.
    pub switches_per_msg: f64,
    /// The part of `cpu_per_msg` spent by fakehub's event log writer thread (none for the peers).
    pub event_writer_per_msg: Option<Duration>,
    /// The 99th percentile of PUBLISH → PUBACK: what a server's CPU per message at this rate
    /// bought (one that answers later reads more messages at once, for less CPU each).
    pub puback_p99: Duration,
}

impl Figures {
    /// Each figure's median over several runs of one server (the upper median of an even count).
    fn median(runs: &[Figures]) -> Figures {
        fn mid<T: PartialOrd + Copy + Default>(mut v: Vec<T>) -> T {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            v.get(v.len() / 2).copied().unwrap_or_default()
        }
        fn of<T: PartialOrd + Copy + Default>(runs: &[Figures], get: impl Fn(&Figures) -> T) -> T {
            mid(runs.iter().map(get).collect())
        }
        // A figure some run could not measure is not measured.
        fn all<T: PartialOrd + Copy + Default>(v: Vec<Option<T>>) -> Option<T> {
            v.into_iter().collect::<Option<Vec<T>>>().map(mid)
        }
        let paced = runs.iter().map(|f| f.fixed.len()).min().unwrap_or(0);
        Figures {
            storm_per_s: of(runs, |f| f.storm_per_s),
            storm_retries: of(runs, |f| f.storm_retries),
            cpu_per_connect: of(runs, |f| f.cpu_per_connect),
            load_cpu_per_connect: of(runs, |f| f.load_cpu_per_connect),
            held: of(runs, |f| f.held),
            refused: runs.iter().find_map(|f| f.refused.clone()),
            rss_held: of(runs, |f| f.rss_held),
            bytes_per_held: of(runs, |f| f.bytes_per_held),
            qos1_per_s: of(runs, |f| f.qos1_per_s),
            cpu_per_msg_unpaced: of(runs, |f| f.cpu_per_msg_unpaced),
            cpu_per_msg_half: of(runs, |f| f.cpu_per_msg_half),
            fixed: (0..paced)
                .map(|i| Paced {
                    cpu_per_msg: of(runs, |f| {
                        f.fixed.get(i).map(|p| p.cpu_per_msg).unwrap_or_default()
                    }),
                    load_cpu_per_msg: of(runs, |f| {
                        f.fixed
                            .get(i)
                            .map(|p| p.load_cpu_per_msg)
                            .unwrap_or_default()
                    }),
                    switches_per_msg: of(runs, |f| {
                        f.fixed
                            .get(i)
                            .map(|p| p.switches_per_msg)
                            .unwrap_or_default()
                    }),
                    event_writer_per_msg: all(runs
                        .iter()
                        .map(|f| f.fixed.get(i).and_then(|p| p.event_writer_per_msg))
                        .collect()),
                    puback_p99: of(runs, |f| {
                        f.fixed.get(i).map(|p| p.puback_p99).unwrap_or_default()
                    }),
                })
                .collect(),
            half_rate: of(runs, |f| f.half_rate),
            puback_p99_half: of(runs, |f| f.puback_p99_half),
            stolen_paced: of(runs, |f| f.stolen_paced),
            all_back: all(runs.iter().map(|f| f.all_back).collect()),
        }
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One run's storm rate, CPU per message at each load, in µs, and PUBACK p99s at the fixed rates.
fn cpu_line(f: &Figures) -> String {
    let mut line = format!(
        "storm {:.0} connects/s ({} tries failed, CPU µs/connect {:.0}); CPU µs/msg unpaced {:.2}, \
         half rate {:.2}",
        f.storm_per_s,
        f.storm_retries,
        micros(f.cpu_per_connect),
        micros(f.cpu_per_msg_unpaced),
        micros(f.cpu_per_msg_half)
    );
    for p in &f.fixed {
        let _ = write!(line, ", {:.2}", micros(p.cpu_per_msg));
    }
    let _ = write!(line, " (fixed rates); PUBACK p99 ms");
    for p in &f.fixed {
        let _ = write!(line, " {:.2}", p.puback_p99.as_secs_f64() * 1e3);
    }
    let _ = write!(line, "; host CPU stolen {:.1} %", f.stolen_paced);
    line
}

/// Run the benchmark and print its table (and the fleet's figures).
pub async fn run(opts: &BenchOptions) -> anyhow::Result<Vec<(Kind, Figures)>> {
    let certs = Certificates::generate(&opts.out.join("certs"))?;
    let host_name = "bench.azure-devices.net".to_owned();
    let key = fakehub::sas::generate_key();
    let mut ids: Vec<String> = (0..opts.devices).map(|i| format!("d{i}")).collect();
    ids.extend((0..opts.publishers).map(|i| format!("p{i}")));
    let fleet = Fleet {
        host_name: &host_name,
        key: &key,
        ids: &ids,
    };
    let tls = fakehub::tls::client_config_trusting(&[certs.ca_der.clone().into()])?;
    // `--devices 0`: only the fleet.
    let servers = if opts.devices > 0 {
        &opts.servers[..]
    } else {
        &[]
    };
    let rounds = opts.runs.max(1);
    let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); servers.len()];
    // Interleaved: each round measures every server once, in order.
    for round in 0..rounds {
        for (i, &kind) in servers.iter().enumerate() {
            if rounds > 1 {
                crate::tell!("bench: {} (run {} of {rounds}) ...", kind.name(), round + 1);
            } else {
                crate::tell!("bench: {} ...", kind.name());
            }

            let dir = opts.out.join(kind.name());
            let wrap: Vec<String> = opts
                .wrap
                .as_deref()
                .map(|w| w.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default();
            let mut server = Server::start(
                kind,
                &dir,
                &certs,
                &fleet,
                &opts.mosquitto,
                &opts.mosquitto_conf,
                &wrap,
            )
            .await?;
            let target = Arc::new(Target {
                addr: server.addr,
                tls: tokio_rustls::TlsConnector::from(tls.clone()),
                host_name: host_name.clone(),
                key: key.clone(),
            });
            let figures = measure(opts, &mut server, &target)
                .await
                .with_context(|| format!("measuring {}", kind.name()))?;
            drop(server);
            if rounds > 1 {
                // Each run's CPU figures, so that the spread behind a median can be seen.
                crate::tell!(
                    "bench: {} run {}: {}",
                    kind.name(),
                    round + 1,
                    cpu_line(&figures)
                );
            }
            if let Some(r) = runs.get_mut(i) {
                r.push(figures);
            }
        }
    }
    let results: Vec<(Kind, Figures)> = servers
        .iter()
        .zip(&runs)
        .map(|(&k, r)| (k, Figures::median(r)))
        .collect();
    if !results.is_empty() {
        crate::say!("{}", table(opts, &results, &runs));
    }
    if let Some(scenario) = &opts.fleet {
        let before = host::Ticks::now()?;
        let (wall, peak, status) = fleet_run(scenario, &opts.out.join("fleet"))?;
        let stolen = host::Ticks::now()?.stolen_since(&before);
        crate::say!(
            "fleet {}: wall time {:.1} s, peak RSS {:.0} MB, {}; host CPU stolen {:.1} %",
            scenario.display(),
            wall.as_secs_f64(),
            peak as f64 / 1e6,
            status,
            stolen
        );
    }
    Ok(results)
}

async fn measure(
    opts: &BenchOptions,
    server: &mut Server,
    target: &Arc<Target>,
) -> anyhow::Result<Figures> {
    let mut f = Figures::default();
    // Let the server settle before its idle memory is read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = server.rss()?;

    // Connection storm: every device at once, `concurrency` attempts under way.
    let gate = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let stop = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (cpu_before, load_before) = (server.cpu()?, server::own_cpu()?);
    let start = Instant::now();
    for i in 0..opts.devices {
        tokio::spawn(load::hold(
            target.clone(),
            format!("d{i}"),
            gate.clone(),
            3,
            tx.clone(),
            stop.clone(),
        ));
    }
    drop(tx);
    let mut last_up = start;
    let mut settled = 0;
    while settled < opts.devices {
        match rx.recv().await {
            Some(Held::Up(at)) => {
                f.held += 1;
                settled += 1;
                last_up = last_up.max(at);
            }
            Some(Held::GaveUp(e)) => {
                settled += 1;
                f.refused.get_or_insert_with(|| e.to_string());
            }
            Some(Held::Down) => f.held = f.held.saturating_sub(1),
            Some(Held::Retry) => f.storm_retries = f.storm_retries.saturating_add(1),
            None => break,
        }
    }
    f.storm_per_s = f.held as f64 / last_up.duration_since(start).as_secs_f64().max(1e-9);
    let held = u64::try_from(f.held).unwrap_or(u64::MAX);
    f.cpu_per_connect = per_message(server.cpu()?.saturating_sub(cpu_before), held);
    f.load_cpu_per_connect = per_message(server::own_cpu()?.saturating_sub(load_before), held);
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.rss_held = server.rss()?;
    f.bytes_per_held = idle_rss.abs_diff(f.rss_held) as f64 / f.held.max(1) as f64;
    if f.rss_held < idle_rss {
        f.bytes_per_held = -f.bytes_per_held;
    }

    // QoS 1: unpaced, then at half of the rate reached.
    let mut pubs = Vec::new();
    for i in 0..opts.publishers {
        let id = format!("p{i}");
        let conn = target
            .connect(&id)
            .await
            .with_context(|| format!("publisher {id} cannot connect"))?;
        pubs.push((id, conn));
    }
    let cpu0 = server.cpu()?;
    let (pubs, unpaced) = load::publish(pubs, opts.inflight, None, opts.publish_for).await;
    let cpu1 = server.cpu()?;
    f.qos1_per_s = unpaced.rate();
    f.cpu_per_msg_unpaced = per_message(cpu1.saturating_sub(cpu0), unpaced.acked);
    f.half_rate = f.qos1_per_s / 2.0;
    let paced_from = host::Ticks::now()?;
    let (pubs, mut half) =
        load::publish(pubs, opts.inflight, Some(f.half_rate), opts.publish_for).await;
    let cpu2 = server.cpu()?;
    f.cpu_per_msg_half = per_message(cpu2.saturating_sub(cpu1), half.acked);
    f.puback_p99_half = half.quantile(0.99);
    let mut pubs = pubs;
    for &rate in &opts.fixed_rates {
        let (cpu0, switches0) = (server.cpu()?, server.switches()?);
        let load0 = server::own_cpu()?;
        let writer0 = server.thread_cpu(EVENT_WRITER)?;
        let (back, mut run) =
            load::publish(pubs, opts.inflight, Some(rate), opts.publish_for).await;
        pubs = back;
        let writer = server.thread_cpu(EVENT_WRITER)?;
        f.fixed.push(Paced {
            cpu_per_msg: per_message(server.cpu()?.saturating_sub(cpu0), run.acked),
            load_cpu_per_msg: per_message(server::own_cpu()?.saturating_sub(load0), run.acked),
            switches_per_msg: server.switches()?.saturating_sub(switches0) as f64
                / run.acked.max(1) as f64,
            event_writer_per_msg: writer0
                .zip(writer)
                .map(|(a, b)| per_message(b.saturating_sub(a), run.acked)),
            puback_p99: run.quantile(0.99),
        });
    }
    f.stolen_paced = host::Ticks::now()?.stolen_since(&paced_from);
    drop(pubs);

    // Mass drop: kill the server, start it again, wait for every held device to be back.
    let held = f.held;
    let killed = Instant::now();
    server.kill_and_restart().await?;
    let mut back = 0;
    let mut last = killed;
    let deadline = tokio::time::sleep(Duration::from_secs(120));
    tokio::pin!(deadline);
    while back < held {
        tokio::select! {
            m = rx.recv() => match m {
                Some(Held::Up(at)) => {
                    back += 1;
                    last = last.max(at);
                }
                Some(_) => {}
                None => break,
            },
            _ = &mut deadline => break,
        }
    }
    if back >= held {
        f.all_back = Some(last.duration_since(killed));
    }
    server.forget_killed_output();
    stop.cancel();
    Ok(f)
}

/// The name (`comm`) of fakehub's event log writer thread, as far as Linux keeps it (15 bytes).
const EVENT_WRITER: &str = "fakehub-events-";

fn per_message(cpu: Duration, messages: u64) -> Duration {
    if messages == 0 {
        return Duration::ZERO;
    }
    cpu / u32::try_from(messages).unwrap_or(u32::MAX)
}

/// The table: one row per measure, a column per server, and fakehub ÷ each peer; with several
/// runs of each server (`runs`, one list per entry of `results`, in order), then each row's ratios
/// run by run (see [`paired`]).
pub fn table(opts: &BenchOptions, results: &[(Kind, Figures)], runs: &[Vec<Figures>]) -> String {
    type Get = Box<dyn Fn(&Figures) -> Option<f64>>;
    let mut rows: Vec<(String, &str, Get)> = Vec::new();
    let mut row = |name: &str, better, get: Get| rows.push((name.to_owned(), better, get));
    row(
        "connection storm, connects/s",
        "higher",
        Box::new(|f| Some(f.storm_per_s)),
    );
    row(
        "  server CPU per connect, µs",
        "lower",
        Box::new(|f| Some(micros(f.cpu_per_connect))),
    );
    row(
        "  the load tool's CPU per connect meanwhile, µs",
        "",
        Box::new(|f| Some(micros(f.load_cpu_per_connect))),
    );
    row(
        "held connections",
        "higher",
        Box::new(|f| Some(f.held as f64)),
    );
    row(
        "RSS with all held, MB",
        "lower",
        Box::new(|f| Some(f.rss_held as f64 / 1e6)),
    );
    row(
        "KB per held connection",
        "lower",
        Box::new(|f| Some(f.bytes_per_held / 1e3)),
    );
    row(
        "QoS 1 unpaced, msgs/s",
        "higher",
        Box::new(|f| Some(f.qos1_per_s)),
    );
    row(
        "server CPU per QoS 1 msg, unpaced, µs",
        "lower",
        Box::new(move |f| Some(micros(f.cpu_per_msg_unpaced))),
    );
    row(
        "server CPU per QoS 1 msg, half rate, µs",
        "lower",
        Box::new(move |f| Some(micros(f.cpu_per_msg_half))),
    );
    for (i, rate) in opts.fixed_rates.iter().enumerate() {
        let at = move |f: &Figures| f.fixed.get(i).cloned();
        row(
            &format!("server CPU per QoS 1 msg at {rate} msgs/s, µs"),
            "lower",
            Box::new(move |f| at(f).map(|p| micros(p.cpu_per_msg))),
        );
        row(
            "  of which the event log writer, µs",
            "",
            Box::new(move |f| at(f)?.event_writer_per_msg.map(micros)),
        );
        row(
            "  the load tool's CPU per msg meanwhile, µs",
            "",
            Box::new(move |f| at(f).map(|p| micros(p.load_cpu_per_msg))),
        );
        row(
            "  server + load tool, µs",
            "lower",
            Box::new(move |f| at(f).map(|p| micros(p.cpu_per_msg + p.load_cpu_per_msg))),
        );
        row(
            &format!("  thread switches per msg at {rate} msgs/s"),
            "lower",
            Box::new(move |f| at(f).map(|p| p.switches_per_msg)),
        );
        row(
            &format!("  PUBACK p99 at {rate} msgs/s, ms"),
            "lower",
            Box::new(move |f| at(f).map(|p| p.puback_p99.as_secs_f64() * 1e3)),
        );
    }
    row(
        "half rate (own max / 2), msgs/s",
        "",
        Box::new(|f| Some(f.half_rate)),
    );
    row(
        "PUBACK p99 at half rate, ms",
        "lower",
        Box::new(|f| Some(f.puback_p99_half.as_secs_f64() * 1e3)),
    );
    row(
        "server killed -> all back, s",
        "lower",
        Box::new(|f| f.all_back.map(|d| d.as_secs_f64())),
    );
    let mut out = String::new();
    if opts.runs > 1 {
        let _ = writeln!(
            out,
            "medians of {} interleaved runs of each server",
            opts.runs
        );
    }
    let _ = writeln!(
        out,
        "{} devices ({} at once), {} publishers x {} in flight for {:?}; fixed rates {:?} msgs/s",
        opts.devices,
        opts.concurrency,
        opts.publishers,
        opts.inflight,
        opts.publish_for,
        opts.fixed_rates
    );
    let _ = write!(out, "{:<46}", "measure");
    for (k, _) in results {
        let _ = write!(out, "{:>w$}", k.name(), w = column(k.name()));
    }
    let of = |kind| results.iter().find(|(k, _)| *k == kind).map(|(_, f)| f);
    let fh = of(Kind::Fakehub);
    // fakehub ÷ each peer measured.
    let peers: Vec<(Kind, &Figures)> = [Kind::Mosquitto, Kind::MosquittoNodelay, Kind::Bare]
        .into_iter()
        .filter_map(|k| Some((k, of(k)?)))
        .collect();
    if fh.is_some() {
        for (k, _) in &peers {
            let _ = write!(
                out,
                "{:>w$}",
                ratio_header(*k),
                w = column(&ratio_header(*k))
            );
        }
    }
    if fh.is_some() && !peers.is_empty() {
        let _ = write!(out, "  better");
    }
    let _ = writeln!(out);
    for (name, better, get) in &rows {
        let _ = write!(out, "{name:<46}");
        for (k, f) in results {
            let cell = get(f).map_or("-".to_owned(), number);
            let _ = write!(out, "{cell:>w$}", w = column(k.name()));
        }
        if let Some(a) = fh {
            for (k, b) in &peers {
                let ratio = get(a)
                    .zip(get(b))
                    .filter(|(_, b)| *b != 0.0)
                    .map_or("-".to_owned(), |(a, b)| format!("{:.2}", a / b));
                let _ = write!(out, "{ratio:>w$}", w = column(&ratio_header(*k)));
            }
            if !peers.is_empty() {
                let _ = write!(out, "  {better}");
            }
        }
        let _ = writeln!(out);
    }
    let _ = write!(
        out,
        "host CPU stolen by the hypervisor during the paced runs, %:"
    );
    for (k, f) in results {
        let _ = write!(out, " {} {:.1}", k.name(), f.stolen_paced);
    }
    let _ = writeln!(
        out,
        " (a stolen vCPU stalls every thread on it: latencies and CPU per message on a VM with \
         steal vary from run to run)"
    );
    for (k, f) in results {
        if let Some(why) = &f.refused {
            let _ = writeln!(
                out,
                "{}: {} of {} devices not held; the first: {why}",
                k.name(),
                opts.devices.saturating_sub(f.held),
                opts.devices
            );
        }
    }
    let _ = writeln!(
        out,
        "÷ peer = fakehub / that peer (mosquitto-nodelay: mosquitto with set_tcp_nodelay true, \
         answering at once as fakehub does; bare: a tokio-rustls acceptor answering just enough MQTT)"
    );
    // Each round measured every server once, one after the other: a round's runs are minutes
    // apart, its rounds further. On a VM whose speed wanders from minute to minute, the ratio
    // within each round, then its median, says more than the ratio of two medians.
    let fh_runs = results
        .iter()
        .zip(runs)
        .find(|((k, _), _)| *k == Kind::Fakehub)
        .map(|(_, r)| r);
    let peer_runs: Vec<(Kind, &Vec<Figures>)> = results
        .iter()
        .zip(runs)
        .filter(|((k, _), _)| *k != Kind::Fakehub)
        .map(|((k, _), r)| (*k, r))
        .collect();
    if let Some(fh_runs) = fh_runs.filter(|r| r.len() > 1) {
        if !peer_runs.is_empty() {
            let _ = writeln!(
                out,
                "\nratios run by run: fakehub's run of each round ÷ the peer's run of the same \
                 round; median (lowest–highest) over {} rounds",
                fh_runs.len()
            );
            let _ = write!(out, "{:<46}", "measure");
            for (k, _) in &peer_runs {
                let _ = write!(out, "{:>w$}", ratio_header(*k), w = run_column(*k));
            }
            let _ = writeln!(out, "  better");
            for (name, better, get) in rows.iter().filter(|(_, b, _)| !b.is_empty()) {
                let _ = write!(out, "{name:<46}");
                let ours: Vec<Option<f64>> = fh_runs.iter().map(get).collect();
                for (k, theirs) in &peer_runs {
                    let theirs: Vec<Option<f64>> = theirs.iter().map(get).collect();
                    let cell = paired(&ours, &theirs).map_or("-".to_owned(), |r| {
                        format!("{:.2} ({:.2}–{:.2})", r.median, r.lowest, r.highest)
                    });
                    let _ = write!(out, "{cell:>w$}", w = run_column(*k));
                }
                let _ = writeln!(out, "  {better}");
            }
        }
    }
    out
}

/// A column's width in the table: its header and two spaces, at least 12.
fn column(header: &str) -> usize {
    header.chars().count().max(10) + 2
}

/// The header of the column of ratios to a peer.
fn ratio_header(peer: Kind) -> String {
    format!("÷ {}", peer.name())
}

/// A column's width among the ratios run by run (each cell a median and its range).
fn run_column(peer: Kind) -> usize {
    column(&ratio_header(peer)).max(22)
}

/// The ratios of two servers' figures round by round.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Paired {
    /// The median ratio (the upper median of an even count).
    pub median: f64,
    pub lowest: f64,
    pub highest: f64,
}

/// `ours[i] ÷ theirs[i]` for every round both measured (and `theirs[i]` is not 0): their median,
/// lowest and highest; `None` when no round gives a ratio.
pub fn paired(ours: &[Option<f64>], theirs: &[Option<f64>]) -> Option<Paired> {
    let mut ratios: Vec<f64> = ours
        .iter()
        .zip(theirs)
        .filter_map(|(a, b)| Some((*a)? / (*b).filter(|b| *b != 0.0)?))
        .filter(|r| r.is_finite())
        .collect();
    ratios.sort_by(f64::total_cmp);
    Some(Paired {
        median: *ratios.get(ratios.len() / 2)?,
        lowest: *ratios.first()?,
        highest: *ratios.last()?,
    })
}

fn number(x: f64) -> String {
    if x.abs() >= 100.0 || x.fract() == 0.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// Run a scenario with `fakehub run` in a child process; its wall time, peak RSS (bytes, from
/// `wait4`'s rusage) and how it exited.
pub fn fleet_run(scenario: &Path, out: &Path) -> anyhow::Result<(Duration, u64, String)> {
    let exe = std::env::current_exe().context("cannot find the fakehub binary")?;
    let started = Instant::now();
    let child = std::process::Command::new(exe)
        .arg("run")
        .arg(scenario)
        .arg("--out")
        .arg(out)
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("cannot start `fakehub run`")?;
    let pid = i32::try_from(child.id()).context("process id out of range")?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 waits for our own child and writes into the two out-parameters we pass.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r != pid {
        return Err(std::io::Error::last_os_error()).context("waiting for `fakehub run`");
    }
    let wall = started.elapsed();
    let how = if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else {
        format!("killed by signal {}", libc::WTERMSIG(status))
    };
    // ru_maxrss is in kilobytes on Linux.
    let peak = u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024;
    Ok((wall, peak, how))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_ratios_are_taken_round_by_round_not_between_medians() {
        // The ratio of the medians (19 / 20) says fakehub used less; round by round it used
        // more in two rounds of three, and the median of the rounds says so.
        let ours = [Some(10.0), Some(30.0), Some(19.0)];
        let theirs = [Some(8.0), Some(20.0), Some(25.0)];
        let p = paired(&ours, &theirs).unwrap();
        assert_eq!(p.lowest, 0.76);
        assert_eq!(p.median, 1.25);
        assert_eq!(p.highest, 1.5);
        let medians = |v: &[Option<f64>]| Figures::median(&figures(v)).storm_per_s;
        assert_eq!(medians(&ours) / medians(&theirs), 0.95);
        // A round either side did not measure, or measured 0 for the peer, gives no ratio.
        let p = paired(
            &[Some(3.0), None, Some(8.0)],
            &[Some(0.0), Some(1.0), Some(4.0)],
        )
        .unwrap();
        assert_eq!((p.lowest, p.median, p.highest), (2.0, 2.0, 2.0));
        assert_eq!(paired(&[None, Some(1.0)], &[Some(1.0), None]), None);
        assert_eq!(paired(&[], &[]), None);
    }

    /// One run's figures per value, the value as its storm rate.
    fn figures(v: &[Option<f64>]) -> Vec<Figures> {
        v.iter()
            .map(|x| Figures {
                storm_per_s: x.unwrap_or_default(),
                ..Figures::default()
            })
            .collect()
    }
}
