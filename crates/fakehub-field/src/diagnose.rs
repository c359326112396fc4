//! From Connections records to findings, per device and for the fleet, each resting on the records
//! it cites. The rules and thresholds are listed in docs/FIELD.md.

use std::collections::{BTreeMap, BTreeSet};

use crate::record::{FieldRecord, Operation, Source};
use crate::time::{human, Millis};

/// IoT Hub's longest idle window (1.5 × keep-alive, capped at 1767 s).
pub const IDLE_CAP_MS: i64 = 1_767_000;
/// Disconnect records of one device this close together are one drop (401003 then 404104).
const SAME_DROP_MS: i64 = 1_000;
/// The window in which drops of many devices count as one burst.
pub const BURST_WINDOW_MS: i64 = 60_000;
/// Token-expiry periods: a 60-minute token (the SDKs' default) plus 0–10 minutes of grace, with
/// slack for a drop found on a sweep.
const TOKEN_PERIOD_MS: (i64, i64) = (55 * 60_000, 75 * 60_000);
/// Attempts closer than this (median) are a tight loop.
const TIGHT_GAP_MS: i64 = 1_000;

/// One drop: the end of a connection that was not the device's DISCONNECT.
#[derive(Debug, Clone)]
pub struct Drop {
    pub at: Millis,
    pub codes: Vec<u32>,
    /// Since the connect it ends, when the log has that connect.
    pub session_ms: Option<i64>,
    /// Until the next successful connect, when there is one.
    pub reconnect_ms: Option<i64>,
    pub sources: Vec<Source>,
}

/// A refused or failed connect.
#[derive(Debug, Clone)]
pub struct Failure {
    pub at: Millis,
    pub code: Option<u32>,
    pub source: Source,
}

/// Everything one device did, as the records tell it.
#[derive(Debug, Clone, Default)]
pub struct DeviceView {
    pub id: String,
    pub sdk: BTreeSet<String>,
    pub connects: Vec<(Millis, Source)>,
    pub drops: Vec<Drop>,
    pub graceful: Vec<(Millis, Source)>,
    pub failures: Vec<Failure>,
    pub first: Millis,
    pub last: Millis,
}

/// The kind of a finding, with its measured parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Pattern {
    /// Drops at a fixed connection lifetime in the token range.
    TokenExpiry {
        /// Median connection lifetime before the drop (token lifetime + grace).
        period_ms: i64,
        /// Lowest and highest lifetime seen.
        range_ms: (i64, i64),
        drops: usize,
        /// Drops with 401003 in the same instant.
        with_401003: usize,
        /// Median time from drop to the next successful connect.
        reconnect_ms: Option<i64>,
    },
    /// Drops after the hub's longest idle window.
    IdleTimeout { session_ms: i64, drops: usize },
    /// Drops at a fixed lifetime that no token or idle rule explains.
    Periodic { period_ms: i64, drops: usize },
    /// Drops with no period, no burst.
    RandomDrops {
        drops: usize,
        per_hour: f64,
        /// Median time between drops of a device.
        interval_ms: Option<i64>,
        /// Drops never followed by a successful connect in the log.
        not_reconnected: usize,
        reconnect_ms: Option<i64>,
    },
    /// Connects refused for auth again and again.
    AuthLoop {
        failures: usize,
        span_ms: i64,
        median_gap_ms: i64,
        /// A successful connect ended the run.
        recovered: bool,
        /// The run began right after a token-expiry drop.
        after_expiry: bool,
    },
    /// Reconnect attempts in a tight loop while refused.
    ReconnectStorm {
        attempts: usize,
        span_ms: i64,
        median_gap_ms: i64,
        codes: BTreeMap<u32, usize>,
    },
    /// Connects refused with 500xxx (a few devices; no burst).
    HubErrors {
        failures: usize,
        span_ms: i64,
        codes: BTreeMap<u32, usize>,
    },
    /// Many devices dropping at once.
    FleetBurst {
        dropped: usize,
        fleet: usize,
        window_ms: i64,
        drop_codes: BTreeMap<u32, usize>,
        connect_codes: BTreeMap<u32, usize>,
        /// From the first drop to the last refused connect before the devices got back.
        outage_ms: i64,
        back: usize,
        /// First to last reconnect of the dropped devices.
        spread_ms: i64,
        peak_per_second: usize,
        /// Devices retrying in a tight loop during the burst.
        storm_devices: usize,
        connected_before: usize,
        connected_min: usize,
    },
    /// Connections closed because another one took the identity (400027).
    Takeover {
        count: usize,
        interval_ms: Option<i64>,
    },
    /// Throttled connects or closes (429xxx).
    Throttling {
        count: usize,
        codes: BTreeMap<u32, usize>,
        span_ms: i64,
        per_minute: f64,
        admitted_per_second: f64,
    },
}

impl Pattern {
    /// A short stable name (scenario file names, comparisons).
    pub fn slug(&self) -> &'static str {
        match self {
            Pattern::TokenExpiry { .. } => "token-expiry",
            Pattern::IdleTimeout { .. } => "keepalive-idle-timeout",
            Pattern::Periodic { .. } => "periodic-drops",
            Pattern::RandomDrops { .. } => "random-drops",
            Pattern::AuthLoop { .. } => "auth-loop",
            Pattern::ReconnectStorm { .. } => "reconnect-storm",
            Pattern::HubErrors { .. } => "hub-errors",
            Pattern::FleetBurst { .. } => "fleet-burst",
            Pattern::Takeover { .. } => "takeover",
            Pattern::Throttling { .. } => "throttling",
        }
    }
}

/// A finding: what the records show, which of the 404104 guide's causes it matches, what the log
/// cannot tell apart, and the records it rests on.
#[derive(Debug, Clone)]
pub struct Finding {
    pub pattern: Pattern,
    pub title: String,
    pub devices: Vec<String>,
    /// The SDKs those devices reported (`sdkVersion`).
    pub sdks: Vec<String>,
    pub cause: &'static str,
    pub cannot_tell: &'static str,
    /// The sample-device bug that shows the defect, if one does.
    pub bug: Option<&'static str>,
    pub details: Vec<String>,
    pub evidence: Vec<Source>,
}

/// One hub's diagnosis.
#[derive(Debug, Clone)]
pub struct HubDiagnosis {
    pub hub: String,
    pub first: Millis,
    pub last: Millis,
    pub records: usize,
    pub devices: Vec<DeviceView>,
    pub findings: Vec<Finding>,
}

fn median(v: &mut [i64]) -> Option<i64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[v.len() / 2])
}

fn is_token_code(c: u32) -> bool {
    c == 401003
}
fn is_throttle(c: u32) -> bool {
    (429000..430000).contains(&c)
}
fn is_server(c: u32) -> bool {
    (500000..600000).contains(&c)
}
fn is_auth(c: u32) -> bool {
    (401000..402000).contains(&c)
}

/// Build each device's view from its records (in time order).
pub fn device_views(records: &[&FieldRecord]) -> Vec<DeviceView> {
    let mut by: BTreeMap<String, Vec<&FieldRecord>> = BTreeMap::new();
    for r in records {
        by.entry(r.identity()).or_default().push(r);
    }
    let mut out = Vec::new();
    for (id, recs) in by {
        let mut v = DeviceView {
            id,
            first: recs.first().map(|r| r.at).unwrap_or_default(),
            last: recs.last().map(|r| r.at).unwrap_or_default(),
            ..Default::default()
        };
        let mut since: Option<Millis> = None;
        for r in recs {
            if let Some(s) = &r.sdk {
                v.sdk.insert(s.clone());
            }
            match (r.operation, r.is_error()) {
                (Operation::Connect, false) => {
                    since = Some(r.at);
                    v.connects.push((r.at, r.source.clone()));
                    // The first connect after a drop ends its reconnect time.
                    if let Some(d) = v.drops.last_mut() {
                        if d.reconnect_ms.is_none() {
                            d.reconnect_ms = Some(r.at - d.at);
                        }
                    }
                }
                (Operation::Connect, true) => v.failures.push(Failure {
                    at: r.at,
                    code: r.code,
                    source: r.source.clone(),
                }),
                (Operation::Disconnect, false) => {
                    since = None;
                    v.graceful.push((r.at, r.source.clone()));
                    if let Some(d) = v.drops.last_mut() {
                        if d.reconnect_ms.is_none() && v.connects.last().is_some_and(|c| c.0 > d.at)
                        {
                            d.reconnect_ms = v.connects.last().map(|c| c.0 - d.at);
                        }
                    }
                }
                (Operation::Disconnect, true) => {
                    let code = r.code.unwrap_or(404104);
                    let merge = v.drops.last().is_some_and(|d| {
                        r.at - d.at <= SAME_DROP_MS && v.connects.last().is_none_or(|c| c.0 <= d.at)
                    });
                    if merge {
                        if let Some(d) = v.drops.last_mut() {
                            d.codes.push(code);
                            d.sources.push(r.source.clone());
                        }
                    } else {
                        v.drops.push(Drop {
                            at: r.at,
                            codes: vec![code],
                            session_ms: since.map(|s| r.at - s),
                            reconnect_ms: None,
                            sources: vec![r.source.clone()],
                        });
                    }
                    since = None;
                }
            }
        }
        out.push(v);
    }
    out
}

/// A burst of drops across devices.
struct Burst {
    first: Millis,
    last: Millis,
    /// (device index, drop index)
    members: Vec<(usize, usize)>,
}

fn find_bursts(devs: &[DeviceView]) -> Vec<Burst> {
    let fleet = devs.len();
    let need = 3usize.max(fleet.div_ceil(10));
    let mut all: Vec<(Millis, usize, usize)> = Vec::new();
    for (di, d) in devs.iter().enumerate() {
        for (xi, x) in d.drops.iter().enumerate() {
            // Takeovers and token expiries are per-device causes even when devices line up.
            if !x.codes.contains(&400027) && !x.codes.iter().any(|c| is_token_code(*c)) {
                all.push((x.at, di, xi));
            }
        }
    }
    all.sort_unstable();
    let mut marked = vec![false; all.len()];
    let mut j = 0;
    for i in 0..all.len() {
        if j < i {
            j = i;
        }
        while j + 1 < all.len() && all[j + 1].0 - all[i].0 <= BURST_WINDOW_MS {
            j += 1;
        }
        let distinct: BTreeSet<usize> = all[i..=j].iter().map(|x| x.1).collect();
        if distinct.len() >= need {
            for m in marked.iter_mut().take(j + 1).skip(i) {
                *m = true;
            }
        }
    }
    let mut bursts: Vec<Burst> = Vec::new();
    for (k, x) in all.iter().enumerate() {
        if !marked[k] {
            continue;
        }
        match bursts.last_mut() {
            Some(b) if x.0 - b.last <= BURST_WINDOW_MS => {
                b.last = x.0;
                b.members.push((x.1, x.2));
            }
            _ => bursts.push(Burst {
                first: x.0,
                last: x.0,
                members: vec![(x.1, x.2)],
            }),
        }
    }
    bursts
}

/// Runs of consecutive refused connects (no success in between).
fn failure_runs(d: &DeviceView) -> Vec<Vec<&Failure>> {
    let mut runs: Vec<Vec<&Failure>> = Vec::new();
    let mut current: Vec<&Failure> = Vec::new();
    let mut ci = 0;
    for f in &d.failures {
        // A success between the last failure and this one ends the run.
        while ci < d.connects.len() && d.connects[ci].0 <= f.at {
            if !current.is_empty() {
                runs.push(std::mem::take(&mut current));
            }
            ci += 1;
        }
        current.push(f);
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

fn gaps(times: &[Millis]) -> Vec<i64> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

fn codes_of<'a>(it: impl Iterator<Item = &'a u32>) -> BTreeMap<u32, usize> {
    let mut m = BTreeMap::new();
    for c in it {
        *m.entry(*c).or_default() += 1;
    }
    m
}

fn code_list(m: &BTreeMap<u32, usize>) -> String {
    m.iter()
        .map(|(c, n)| format!("{c} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which token lifetimes and graces fit a period.
pub fn token_fits(period_ms: i64) -> String {
    let mut fits = Vec::new();
    for (lifetime_min, name) in [(60, "60-minute"), (120, "2-hour"), (24 * 60, "24-hour")] {
        let grace = period_ms - lifetime_min * 60_000;
        if (-60_000..=10 * 60_000 + 60_000).contains(&grace) {
            fits.push(if grace < 30_000 {
                format!("a {name} token with no grace")
            } else {
                format!("a {name} token with {} of grace", human(grace))
            });
        }
    }
    fits.push(format!(
        "a token of {} the hub enforces with no grace",
        human(period_ms)
    ));
    fits.join(", or ")
}

struct Acc {
    devices: BTreeSet<String>,
    sdks: BTreeSet<String>,
    evidence: Vec<Source>,
}

impl Acc {
    fn new() -> Acc {
        Acc {
            devices: BTreeSet::new(),
            sdks: BTreeSet::new(),
            evidence: Vec::new(),
        }
    }
    fn add(&mut self, d: &DeviceView, srcs: impl IntoIterator<Item = Source>) {
        self.devices.insert(d.id.clone());
        self.sdks.extend(d.sdk.iter().cloned());
        self.evidence.extend(srcs);
    }
}

/// Diagnose one hub's records (in time order).
pub fn diagnose_hub(hub: &str, records: &[&FieldRecord]) -> HubDiagnosis {
    let devs = device_views(records);
    let first = records.first().map(|r| r.at).unwrap_or_default();
    let last = records.last().map(|r| r.at).unwrap_or_default();
    let mut findings = Vec::new();

    // Fleet bursts first: their drops are not per-device patterns.
    let bursts = find_bursts(&devs);
    let mut in_burst: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut burst_failures: BTreeSet<(usize, Millis)> = BTreeSet::new();
    for b in &bursts {
        in_burst.extend(b.members.iter().copied());
        findings.push(burst_finding(&devs, b, first, &mut burst_failures));
    }

    // Per-device patterns, gathered across the fleet.
    let mut token = (
        Acc::new(),
        Vec::<i64>::new(),
        0usize,
        0usize,
        Vec::<i64>::new(),
    );
    let mut idle = (Acc::new(), Vec::<i64>::new());
    let mut periodic = (Acc::new(), Vec::<i64>::new());
    let mut random = (
        Acc::new(),
        0usize,
        0.0f64,
        Vec::<i64>::new(),
        0usize,
        Vec::<i64>::new(),
    );
    let mut takeover = (Acc::new(), 0usize, Vec::<i64>::new());
    let mut auth: Vec<(Acc, Pattern)> = Vec::new();
    let mut storms: Vec<(Acc, Pattern)> = Vec::new();
    let mut server = (
        Acc::new(),
        0usize,
        Vec::<u32>::new(),
        Millis::MAX,
        Millis::MIN,
    );
    let mut throttle = (Acc::new(), Vec::<u32>::new(), Millis::MAX, Millis::MIN);

    for (di, d) in devs.iter().enumerate() {
        let mine: Vec<(usize, &Drop)> = d
            .drops
            .iter()
            .enumerate()
            .filter(|(xi, _)| !in_burst.contains(&(di, *xi)))
            .collect();
        // Takeovers and throttled closes are their own findings.
        let mut plain: Vec<&Drop> = Vec::new();
        let mut take_times = Vec::new();
        for (_, x) in &mine {
            if x.codes.contains(&400027) {
                takeover.1 += 1;
                take_times.push(x.at);
                takeover.0.add(d, x.sources.iter().cloned());
            } else if x.codes.iter().any(|c| is_throttle(*c)) {
                throttle
                    .1
                    .extend(x.codes.iter().copied().filter(|c| is_throttle(*c)));
                throttle.2 = throttle.2.min(x.at);
                throttle.3 = throttle.3.max(x.at);
                throttle.0.add(d, x.sources.iter().cloned());
            } else {
                plain.push(x);
            }
        }
        takeover.2.extend(gaps(&take_times));
        // Token expiry: 401003 at the drop, or lifetimes in the token range twice or more.
        let in_token_range = |x: &Drop| {
            x.session_ms
                .is_some_and(|s| (TOKEN_PERIOD_MS.0..=TOKEN_PERIOD_MS.1).contains(&s))
        };
        let ranged = plain.iter().filter(|x| in_token_range(x)).count();
        let (tok, rest): (Vec<&Drop>, Vec<&Drop>) = plain.iter().partition(|x| {
            x.codes.iter().any(|c| is_token_code(*c)) || (ranged >= 2 && in_token_range(x))
        });
        for x in &tok {
            if let Some(s) = x.session_ms {
                token.1.push(s);
            }
            token.2 += 1;
            if x.codes.iter().any(|c| is_token_code(*c)) {
                token.3 += 1;
            }
            if let Some(r) = x.reconnect_ms {
                token.4.push(r);
            }
            token.0.add(d, x.sources.iter().cloned());
        }
        // Idle timeout: the connection lived the hub's longest idle window.
        let (idl, rest): (Vec<&Drop>, Vec<&Drop>) = rest.into_iter().partition(|x| {
            x.session_ms
                .is_some_and(|s| (s - IDLE_CAP_MS).abs() <= 60_000)
        });
        for x in &idl {
            idle.1.extend(x.session_ms);
            idle.0.add(d, x.sources.iter().cloned());
        }
        // Another fixed lifetime: three or more drops within 3 % (at least a minute) of their median.
        let mut lifetimes: Vec<i64> = rest.iter().filter_map(|x| x.session_ms).collect();
        let periodic_here = lifetimes.len() >= 3 && {
            let m = median(&mut lifetimes).unwrap_or_default();
            let tol = (m * 3 / 100).max(60_000);
            lifetimes.iter().all(|s| (s - m).abs() <= tol)
                && rest.iter().all(|x| x.session_ms.is_some())
        };
        if periodic_here {
            for x in &rest {
                periodic.1.extend(x.session_ms);
                periodic.0.add(d, x.sources.iter().cloned());
            }
        } else if !rest.is_empty() {
            random.1 += rest.len();
            let hours = ((d.last - d.first) as f64 / 3_600_000.0).max(1.0 / 60.0);
            random.2 += rest.len() as f64 / hours;
            random
                .3
                .extend(gaps(&rest.iter().map(|x| x.at).collect::<Vec<_>>()));
            random.4 += rest.iter().filter(|x| x.reconnect_ms.is_none()).count();
            random.5.extend(rest.iter().filter_map(|x| x.reconnect_ms));
            for x in &rest {
                random.0.add(d, x.sources.iter().cloned());
            }
        }

        // Refused connects: auth loops, tight loops, 500xxx, throttling.
        for run in failure_runs(d) {
            let in_a_burst = run.iter().all(|f| burst_failures.contains(&(di, f.at)));
            let times: Vec<Millis> = run.iter().map(|f| f.at).collect();
            let mut g = gaps(&times);
            let med = median(&mut g).unwrap_or(0);
            let span = times.last().copied().unwrap_or(0) - times.first().copied().unwrap_or(0);
            let codes = codes_of(run.iter().filter_map(|f| f.code.as_ref()));
            let authish = run.iter().filter(|f| f.code.is_some_and(is_auth)).count();
            let recovered = d.connects.iter().any(|c| c.0 > span + times[0]);
            for f in &run {
                if let Some(c) = f.code {
                    if is_throttle(c) {
                        throttle.1.push(c);
                        throttle.2 = throttle.2.min(f.at);
                        throttle.3 = throttle.3.max(f.at);
                        throttle.0.add(d, [f.source.clone()]);
                    }
                }
            }
            if run.len() >= 3 && authish * 10 >= run.len() * 8 {
                let after_expiry = d.drops.iter().any(|x| {
                    x.at <= times[0]
                        && times[0] - x.at <= 10 * 60_000
                        && x.codes.iter().any(|c| is_token_code(*c))
                });
                let mut acc = Acc::new();
                acc.add(d, run.iter().map(|f| f.source.clone()));
                auth.push((
                    acc,
                    Pattern::AuthLoop {
                        failures: run.len(),
                        span_ms: span,
                        median_gap_ms: med,
                        recovered,
                        after_expiry,
                    },
                ));
            } else if run.len() >= 5 && med < TIGHT_GAP_MS && !in_a_burst {
                let mut acc = Acc::new();
                acc.add(d, run.iter().map(|f| f.source.clone()));
                storms.push((
                    acc,
                    Pattern::ReconnectStorm {
                        attempts: run.len(),
                        span_ms: span,
                        median_gap_ms: med,
                        codes,
                    },
                ));
            } else if !in_a_burst && run.iter().any(|f| f.code.is_some_and(is_server)) {
                let srv: Vec<&&Failure> = run
                    .iter()
                    .filter(|f| f.code.is_some_and(is_server))
                    .collect();
                server.1 += srv.len();
                server.2.extend(srv.iter().filter_map(|f| f.code));
                server.3 = server.3.min(times[0]);
                server.4 = server.4.max(times[0] + span);
                server.0.add(d, srv.iter().map(|f| f.source.clone()));
            }
        }
    }

    let sdks = |a: &Acc| a.sdks.iter().cloned().collect::<Vec<_>>();
    let devices = |a: &Acc| a.devices.iter().cloned().collect::<Vec<_>>();
    if token.2 > 0 {
        let mut lifetimes = token.1.clone();
        let period = median(&mut lifetimes).unwrap_or(0);
        let range = (
            lifetimes.first().copied().unwrap_or(0),
            lifetimes.last().copied().unwrap_or(0),
        );
        let reconnect = median(&mut token.4);
        let pattern = Pattern::TokenExpiry {
            period_ms: period,
            range_ms: range,
            drops: token.2,
            with_401003: token.3,
            reconnect_ms: reconnect,
        };
        let mut details = vec![
            format!(
                "{} drops on {} device(s); connections lived {} (median; {}–{})",
                token.2,
                token.0.devices.len(),
                human(period),
                human(range.0),
                human(range.1)
            ),
            format!(
                "401003 IoTHubUnauthorized in the same instant: {} of {} drops",
                token.3, token.2
            ),
            format!("fits {}", token_fits(period)),
        ];
        if let Some(r) = reconnect {
            details.push(format!("reconnected after {} (median)", human(r)));
        }
        findings.push(Finding {
            title: format!("Drops every {} (token expiry)", human(period)),
            devices: devices(&token.0),
            sdks: sdks(&token.0),
            cause: "404104 guide, symptom 1 / cause 1: the SAS token expired and the hub closed the connection (401003, then 404104)",
            cannot_tell: "a device that never renews its token from one that relies on the hub's disconnect to renew (older .NET/Java SDKs: \"token lifespan plus grace\"); a 60-minute token with 5 minutes of grace from a 65-minute token with none",
            bug: Some("no-token-renewal"),
            details,
            evidence: token.0.evidence,
            pattern,
        });
    }
    if !idle.1.is_empty() {
        let mut s = idle.1.clone();
        let m = median(&mut s).unwrap_or(0);
        findings.push(Finding {
            title: format!("Drops after {} idle (keep-alive cap)", human(m)),
            devices: devices(&idle.0),
            sdks: sdks(&idle.0),
            details: vec![
                format!(
                    "{} drops with 404104 and no 401003 after connections of {} (median): IoT Hub's 1767 s idle cap",
                    idle.1.len(),
                    human(m)
                ),
                "a keep-alive over 1177 s (1767 / 1.5), or no PINGREQ at all, lets the hub's idle timeout close a quiet device".into(),
            ],
            pattern: Pattern::IdleTimeout {
                session_ms: m,
                drops: idle.1.len(),
            },
            cause: "404104 guide, symptom 2 / cause 2: nothing reached the hub for longer than its keep-alive window (remote idle timeout)",
            cannot_tell: "a keep-alive the hub cannot honour from a device whose network silently dropped for the window (both end in 404104 at the idle timeout)",
            bug: Some("huge-keepalive"),
            evidence: idle.0.evidence,
        });
    }
    if !periodic.1.is_empty() {
        let mut s = periodic.1.clone();
        let m = median(&mut s).unwrap_or(0);
        findings.push(Finding {
            title: format!("Drops every {} (no token or idle signature)", human(m)),
            devices: devices(&periodic.0),
            sdks: sdks(&periodic.0),
            details: vec![format!(
                "{} drops with 404104 after connections of {} (median), no 401003",
                periodic.1.len(),
                human(m)
            )],
            pattern: Pattern::Periodic {
                period_ms: m,
                drops: periodic.1.len(),
            },
            cause: "404104 guide, cause 2: a connection closed without DISCONNECT on a schedule (a NAT or firewall idle timeout, a watchdog restart)",
            cannot_tell: "a network device's timeout from a scheduled device restart or a token the hub drops without logging 401003",
            bug: Some("no-disconnect"),
            evidence: periodic.0.evidence,
        });
    }
    if random.1 > 0 {
        let interval = median(&mut random.3);
        let reconnect = median(&mut random.5);
        let n_dev = random.0.devices.len().max(1);
        let mut details = vec![format!(
            "{} drops with 404104 on {} device(s), {:.2} per device-hour, no period and no fleet burst",
            random.1,
            random.0.devices.len(),
            random.2 / n_dev as f64
        )];
        if let Some(i) = interval {
            details.push(format!(
                "median time between a device's drops: {}",
                human(i)
            ));
        }
        if let Some(r) = reconnect {
            details.push(format!("reconnected after {} (median)", human(r)));
        }
        if random.4 > 0 {
            details.push(format!(
                "{} drop(s) never followed by a reconnect in the log: the device stopped (or went away) without DISCONNECT",
                random.4
            ));
        }
        findings.push(Finding {
            title: "Random drops of single devices".into(),
            devices: devices(&random.0),
            sdks: sdks(&random.0),
            details,
            pattern: Pattern::RandomDrops {
                drops: random.1,
                per_hour: random.2 / n_dev as f64,
                interval_ms: interval,
                not_reconnected: random.4,
                reconnect_ms: reconnect,
            },
            cause: "404104 guide, symptom 2 / cause 2: the connection ended without MQTT DISCONNECT (TCP reset, lost network beyond the keep-alive, the application crashed or stopped)",
            cannot_tell: "a keep-alive timeout from a silent reset, a crash or a shutdown without DISCONNECT: all are one 404104 in the log",
            bug: Some("no-disconnect"),
            evidence: random.0.evidence,
        });
    }
    for (acc, p) in auth {
        let Pattern::AuthLoop {
            failures,
            span_ms,
            median_gap_ms,
            recovered,
            after_expiry,
        } = &p
        else {
            continue;
        };
        let mut details = vec![format!(
            "{failures} connects refused with 401xxx over {} (median gap {})",
            human(*span_ms),
            human(*median_gap_ms)
        )];
        details.push(if *recovered {
            "a connect succeeded afterwards".into()
        } else {
            "no successful connect afterwards: the device is stuck".into()
        });
        if *after_expiry {
            details.push(
                "the refusals began right after a token-expiry drop: the device reconnects with the token that expired".into(),
            );
        }
        findings.push(Finding {
            title: format!(
                "Repeated auth failures ({} refused connects)",
                failures
            ),
            devices: devices(&acc),
            sdks: sdks(&acc),
            details,
            cause: "401003 IoTHubUnauthorized on connect (not a 404104 cause): the credential the device presents is refused",
            cannot_tell: "a stale or cached token from a device clock that is off by more than 5 minutes, a rotated key or a wrong key",
            bug: Some("stale-token"),
            evidence: acc.evidence,
            pattern: p,
        });
    }
    for (acc, p) in storms {
        let Pattern::ReconnectStorm {
            attempts,
            span_ms,
            median_gap_ms,
            codes,
        } = &p
        else {
            continue;
        };
        findings.push(Finding {
            title: format!("Reconnect storm ({attempts} refused connects)"),
            devices: devices(&acc),
            sdks: sdks(&acc),
            details: vec![
                format!(
                    "{attempts} connects refused over {} with a median gap of {}: no backoff",
                    human(*span_ms),
                    human(*median_gap_ms)
                ),
                format!("codes: {}", code_list(codes)),
            ],
            cause: "404104 guide, cause 3 (the hub refused connects for a while) met by a device that retries at once; the drop before it is cause 2 (a crash, a reset)",
            cannot_tell: "a crashed application restarted in a loop from a retry loop without backoff; a hub outage from a network path that refuses",
            bug: Some("no-backoff"),
            evidence: acc.evidence,
            pattern: p,
        });
    }
    if server.1 > 0 {
        let codes = codes_of(server.2.iter());
        let span = server.4 - server.3;
        findings.push(Finding {
            title: format!("Connects refused with 500xxx for {}", human(span)),
            devices: devices(&server.0),
            sdks: sdks(&server.0),
            details: vec![format!(
                "{} refused connects on {} device(s) over {}: {}",
                server.1,
                server.0.devices.len(),
                human(span),
                code_list(&codes)
            )],
            pattern: Pattern::HubErrors {
                failures: server.1,
                span_ms: span,
                codes,
            },
            cause: "404104 guide, cause 3: a transient IoT Hub issue (500xxx internal errors)",
            cannot_tell: "which hub node or how many devices it touched beyond those in the log",
            bug: Some("no-backoff"),
            evidence: server.0.evidence,
        });
    }
    if takeover.1 > 0 {
        let interval = median(&mut takeover.2);
        let mut details = vec![format!(
            "{} connections closed with 400027 ConnectionForcefullyClosedOnNewConnection on {} device(s)",
            takeover.1,
            takeover.0.devices.len()
        )];
        if let Some(i) = interval {
            details.push(format!(
                "median {} between takeovers of a device: two clients take turns",
                human(i)
            ));
        }
        findings.push(Finding {
            title: format!("Takeovers ({} × 400027)", takeover.1),
            devices: devices(&takeover.0),
            sdks: sdks(&takeover.0),
            details,
            pattern: Pattern::Takeover {
                count: takeover.1,
                interval_ms: interval,
            },
            cause: "400027: a second connection with the same identity (duplicate device identities, or a reconnect before the hub saw the old connection die)",
            cannot_tell: "two physical devices sharing an identity from one device that opens a second connection",
            bug: None,
            evidence: takeover.0.evidence,
        });
    }
    if !throttle.1.is_empty() {
        let codes = codes_of(throttle.1.iter());
        let span = (throttle.3 - throttle.2).max(0);
        let admitted = records
            .iter()
            .filter(|r| {
                r.operation == Operation::Connect
                    && !r.is_error()
                    && r.at >= throttle.2
                    && r.at <= throttle.3
            })
            .count();
        let secs = (span as f64 / 1000.0).max(1.0);
        let per_minute = throttle.1.len() as f64 / (secs / 60.0).max(1.0);
        findings.push(Finding {
            title: format!("Throttling ({} × 429xxx)", throttle.1.len()),
            devices: devices(&throttle.0),
            sdks: sdks(&throttle.0),
            details: vec![
                format!(
                    "{} throttled connects or closes ({}) on {} device(s) over {}: {:.1} a minute",
                    throttle.1.len(),
                    code_list(&codes),
                    throttle.0.devices.len(),
                    human(span),
                    per_minute
                ),
                format!(
                    "{admitted} connects admitted meanwhile: {:.2} a second",
                    admitted as f64 / secs
                ),
            ],
            pattern: Pattern::Throttling {
                count: throttle.1.len(),
                codes,
                span_ms: span,
                per_minute,
                admitted_per_second: admitted as f64 / secs,
            },
            cause: "429xxx throttling (not a 404104 cause, but a fleet reconnecting at once meets it): the hub's connect rate limit",
            cannot_tell: "a fleet reconnecting in lockstep from one that is simply larger than the hub's unit count allows",
            bug: None,
            evidence: throttle.0.evidence,
        });
    }
    HubDiagnosis {
        hub: hub.to_owned(),
        first,
        last,
        records: records.len(),
        devices: devs,
        findings,
    }
}

fn connected_at(devs: &[DeviceView], t: Millis) -> usize {
    devs.iter()
        .filter(|d| {
            let last_up = d.connects.iter().rev().find(|c| c.0 <= t).map(|c| c.0);
            let last_down = d
                .drops
                .iter()
                .map(|x| x.at)
                .chain(d.graceful.iter().map(|g| g.0))
                .filter(|&x| x <= t)
                .max();
            match (last_up, last_down) {
                (Some(u), Some(dn)) => u > dn,
                (Some(_), None) => true,
                _ => false,
            }
        })
        .count()
}

fn burst_finding(
    devs: &[DeviceView],
    b: &Burst,
    hub_first: Millis,
    burst_failures: &mut BTreeSet<(usize, Millis)>,
) -> Finding {
    let _ = hub_first;
    let mut acc = Acc::new();
    let mut drop_codes = Vec::new();
    let mut connect_codes = Vec::new();
    let mut back_times = Vec::new();
    let mut outage_end = b.first;
    let mut storm_devices = 0;
    let dropped: BTreeSet<usize> = b.members.iter().map(|m| m.0).collect();
    for &(di, xi) in &b.members {
        let d = &devs[di];
        let x = &d.drops[xi];
        drop_codes.extend(x.codes.iter().copied());
        acc.add(d, x.sources.iter().cloned());
    }
    for &di in &dropped {
        let d = &devs[di];
        let back = d.connects.iter().find(|c| c.0 > b.first).map(|c| c.0);
        if let Some(t) = back {
            back_times.push(t);
        }
        let until = back.unwrap_or(Millis::MAX);
        let fails: Vec<&Failure> = d
            .failures
            .iter()
            .filter(|f| f.at >= b.first && f.at < until)
            .collect();
        for f in &fails {
            burst_failures.insert((di, f.at));
            connect_codes.extend(f.code);
            outage_end = outage_end.max(f.at);
        }
        let mut g = gaps(&fails.iter().map(|f| f.at).collect::<Vec<_>>());
        if fails.len() >= 5 && median(&mut g).is_some_and(|m| m < TIGHT_GAP_MS) {
            storm_devices += 1;
        }
        acc.evidence
            .extend(fails.iter().take(3).map(|f| f.source.clone()));
    }
    back_times.sort_unstable();
    let spread = match (back_times.first(), back_times.last()) {
        (Some(a), Some(z)) => z - a,
        _ => 0,
    };
    let mut peak = 0;
    let mut j = 0;
    for i in 0..back_times.len() {
        while j < back_times.len() && back_times[j] - back_times[i] < 1000 {
            j += 1;
        }
        peak = peak.max(j - i);
    }
    let drop_codes = codes_of(drop_codes.iter());
    let connect_codes = codes_of(connect_codes.iter());
    let outage = outage_end - b.first;
    let before = connected_at(devs, b.first - 1);
    let min_connected = {
        let mut m = before;
        let mut t = b.first;
        let end = back_times.last().copied().unwrap_or(b.last);
        while t <= end {
            m = m.min(connected_at(devs, t));
            t += 1000.max((end - b.first) / 200);
        }
        m
    };
    // Lockstep: half the fleet or more back within the same second.
    let lockstep = back_times.len() >= 3 && peak * 2 >= back_times.len();
    let mut details = vec![
        format!(
            "{} of {} devices dropped within {} ({})",
            dropped.len(),
            devs.len(),
            human(b.last - b.first),
            code_list(&drop_codes)
        ),
        format!(
            "connected devices: {before} before, {min_connected} at the lowest (the connected-devices dip)"
        ),
    ];
    if connect_codes.is_empty() {
        details.push(
            "no refused connects afterwards: no 500xxx, so the hub itself may have been fine (a shared network path looks the same)".into(),
        );
    } else {
        details.push(format!(
            "refused connects until {} after the first drop: {}",
            human(outage),
            code_list(&connect_codes)
        ));
    }
    details.push(format!(
        "{} of {} back; reconnects spread over {}, at most {} in one second{}",
        back_times.len(),
        dropped.len(),
        human(spread),
        peak,
        if lockstep {
            ": lockstep (no jitter)"
        } else {
            ""
        }
    ));
    if storm_devices > 0 {
        details.push(format!(
            "{storm_devices} device(s) retried in a tight loop (median gap under 1 s): no backoff"
        ));
    }
    let sdks = acc.sdks.iter().cloned().collect();
    Finding {
        title: format!(
            "{} devices dropped at once{}",
            dropped.len(),
            if connect_codes.keys().any(|c| is_server(*c)) {
                " with 500xxx"
            } else {
                ""
            }
        ),
        devices: acc.devices.iter().cloned().collect(),
        sdks,
        details,
        pattern: Pattern::FleetBurst {
            dropped: dropped.len(),
            fleet: devs.len(),
            window_ms: b.last - b.first,
            drop_codes,
            connect_codes,
            outage_ms: outage,
            back: back_times.len(),
            spread_ms: spread,
            peak_per_second: peak,
            storm_devices,
            connected_before: before,
            connected_min: min_connected,
        },
        cause: "404104 guide, symptom 3 / cause 3: a transient IoT Hub issue (many devices at once, 500xxx, a dip in connected devices)",
        cannot_tell: "a hub-side fault from a network event shared by the devices (a gateway, NAT or ISP dropping every connection): without 500xxx the two look alike",
        bug: Some(if storm_devices > 0 { "no-backoff" } else { "no-jitter" }),
        evidence: acc.evidence,
    }
}

/// Diagnose every hub of an import.
pub fn diagnose(import: &crate::import::Import) -> Vec<HubDiagnosis> {
    import
        .hubs()
        .into_iter()
        .map(|(hub, recs)| diagnose_hub(&hub, &recs))
        .collect()
}
