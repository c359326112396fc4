//! The mutation matrix: every sample-device bug is caught by the assertion that targets it, and the
//! well-behaved device passes every assertion in every scenario. The matrix is printed and must
//! match docs/ASSERTIONS.md.
//!
//! Every test runs on a paused single-threaded runtime, as a simulated scenario run does: time moves
//! only when every party is idle, straight to the next deadline, so each run repeats exactly.

use std::time::Duration;

use fakehub::dps::GroupEnrollment;
use fakehub::faults::{
    DpsAssigning, DpsThrottle, DropPuback, Fault, FaultKind, HubDown, OutageMode, Selector,
};
use fakehub::transport::MemoryRoutes;
use fakehub::{Dps, DpsConfig, EventLog, Hub, HubHandle, VirtualClock};
use fakehub_assert::{Expectation, Log, Verdict};
use sample_device::{Bug, DeviceOptions, InProcess, Provisioning};

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);

/// A hub with `n` sample devices (`d0`…) on its shared clock.
struct Rig {
    hub: HubHandle,
    devices: Vec<InProcess>,
}

impl Rig {
    async fn start(n: usize, bugs: &[Bug], telemetry: Duration) -> Rig {
        let mut b = Hub::builder().seed(7);
        for i in 0..n {
            b = b.device(format!("d{i}"));
        }
        let hub = b.build().unwrap().start().await.unwrap();
        let mut devices = Vec::new();
        for i in 0..n {
            let opts = DeviceOptions {
                bugs: bugs.iter().copied().collect(),
                telemetry_interval: telemetry,
                seed: 1000 + i as u64,
                ..Default::default()
            };
            devices.push(InProcess::spawn(&hub, &format!("d{i}"), opts).unwrap());
        }
        // Every device connected (its timers armed) before time moves.
        for d in &mut devices {
            assert!(
                d.connected(Duration::from_secs(30)).await,
                "all devices connected"
            );
        }
        Rig { hub, devices }
    }

    /// Let `d` of virtual time pass (every party's deadlines inside it fire at their instant).
    async fn pass(&self, d: Duration) {
        self.hub.clock().sleep(d).await;
    }

    /// Stop the devices (each sends DISCONNECT unless it has that bug) and return the log.
    async fn finish(self) -> Log {
        for d in self.devices {
            d.stop().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = Log::of(&self.hub);
        self.hub.shutdown().await.unwrap();
        log
    }
}

/// Two hubs behind one provisioning service (one log), and a device `d0` that provisions through
/// the enrollment group `fleet`.
struct DpsRig {
    hubs: Vec<HubHandle>,
    device: InProcess,
}

impl DpsRig {
    /// `before` acts on the hub that serves DPS before the device starts.
    async fn start(bugs: &[Bug], before: impl FnOnce(&HubHandle)) -> DpsRig {
        let config = DpsConfig {
            groups: vec![GroupEnrollment {
                name: "fleet".into(),
                primary_key: None,
                secondary_key: None,
                x509: false,
                enabled: true,
            }],
            ..Default::default()
        };
        let dps = Dps::new(&config, 7).unwrap();
        let log = EventLog::new(VirtualClock::new());
        let a = Hub::builder()
            .seed(7)
            .host_name("hub-a.azure-devices.net")
            .dps(dps.clone())
            .event_log(log.clone())
            .build()
            .unwrap()
            .start()
            .await
            .unwrap();
        let ca = a.certificates().sibling("hub-b.azure-devices.net").unwrap();
        let b = Hub::builder()
            .seed(7)
            .host_name("hub-b.azure-devices.net")
            .certificates(ca)
            .dps(dps.clone())
            .event_log(log)
            .build()
            .unwrap()
            .start()
            .await
            .unwrap();
        let routes = MemoryRoutes::default();
        for hub in [&a, &b] {
            routes.insert(hub.device_host(), hub.memory_connector());
        }
        before(&a);
        let provisioning = Provisioning {
            host: a.device_host().to_owned(),
            port: 8883,
            id_scope: dps.id_scope().to_owned(),
            registration_id: "d0".into(),
            key: dps.device_key("d0", Some("fleet")).unwrap(),
        };
        let opts = DeviceOptions {
            bugs: bugs.iter().copied().collect(),
            seed: 1000,
            ..Default::default()
        };
        let device = InProcess::provisioned(&a, routes, provisioning, opts).unwrap();
        DpsRig {
            hubs: vec![a, b],
            device,
        }
    }

    async fn pass(&self, d: Duration) {
        self.hubs[0].clock().sleep(d).await;
    }

    /// The hub the device is connected to now.
    fn home(&self) -> &HubHandle {
        self.hubs
            .iter()
            .find(|h| h.connected_clients().iter().any(|c| c == "d0"))
            .expect("d0 is connected to a hub")
    }

    async fn finish(self) -> Log {
        self.device.stop().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = Log::of(&self.hubs[0]);
        for hub in self.hubs.into_iter().rev() {
            hub.shutdown().await.unwrap();
        }
        log
    }
}

/// The scenarios: each reproduces one field failure and is judged by the assertions that target it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// Three hours of a device's life: its token must be renewed.
    TokenLife,
    /// A reset during a 10-minute outage: the device must back off while refused.
    Outage,
    /// A withheld PUBACK, then a reset: the unacknowledged message must be resent.
    LostAck,
    /// The hub loses the session (failover) and resets the connection: subscriptions must be restored.
    SessionLoss,
    /// A quiet device (telemetry every hour) whose keep-alive must keep it inside the hub's window.
    Quiet,
    /// A fleet of 50 dropped at once, with a 2-minute outage: reconnects must spread.
    Fleet,
    /// The service side calls a method, sends a C2D message and patches desired properties; the
    /// connection is reset and the desired properties change while the device is away.
    Service,
    /// The device provisions while DPS throttles every request for 30 s (429, retry-after 5 s).
    DpsThrottle,
    /// The device provisions while DPS keeps every registration `assigning` for 40 s.
    DpsSlow,
    /// Provisioned behind two hubs, the device's hub goes down: it must register again and move.
    Reassignment,
}

async fn run(scenario: Scenario, bugs: &[Bug]) -> Log {
    match scenario {
        Scenario::TokenLife => {
            let rig = Rig::start(1, bugs, MIN).await;
            rig.pass(180 * MIN).await;
            rig.finish().await
        }
        Scenario::Outage => {
            let rig = Rig::start(1, bugs, MIN).await;
            rig.hub.inject(
                Fault::new(FaultKind::Outage(fakehub::faults::Outage {
                    mode: OutageMode::Connack3,
                }))
                .lasting(10 * MIN),
            );
            rig.hub
                .inject(Fault::new(FaultKind::Reset(Default::default())));
            rig.pass(12 * MIN).await;
            rig.finish().await
        }
        Scenario::LostAck => {
            let rig = Rig::start(1, bugs, MIN).await;
            rig.hub.inject(Fault::new(FaultKind::DropPuback(DropPuback {
                count: Some(1),
                ..Default::default()
            })));
            rig.pass(MIN + Duration::from_secs(1)).await;
            // The first telemetry's PUBACK is withheld; then the connection is reset.
            rig.hub
                .event_stream()
                .wait_for(Duration::from_secs(5), |e| {
                    matches!(e.kind, fakehub::EventKind::Withheld { .. })
                })
                .await
                .expect("a PUBACK withheld");
            rig.hub
                .inject(Fault::new(FaultKind::Reset(Default::default())));
            rig.pass(3 * MIN + Duration::from_secs(15)).await;
            rig.finish().await
        }
        Scenario::SessionLoss => {
            let rig = Rig::start(1, bugs, MIN).await;
            rig.hub
                .inject(Fault::new(FaultKind::SessionLoss(Default::default())).lasting(MIN));
            rig.hub
                .inject(Fault::new(FaultKind::Reset(Default::default())));
            rig.pass(2 * MIN + Duration::from_secs(15)).await;
            rig.finish().await
        }
        Scenario::Quiet => {
            let rig = Rig::start(1, bugs, 60 * MIN).await;
            rig.pass(40 * MIN).await;
            rig.finish().await
        }
        Scenario::Fleet => {
            let rig = Rig::start(50, bugs, 10 * MIN).await;
            rig.hub.inject(
                Fault::new(FaultKind::Outage(fakehub::faults::Outage {
                    mode: OutageMode::Connack3,
                }))
                .lasting(2 * MIN),
            );
            rig.hub.inject(
                Fault::new(FaultKind::MassDrop(fakehub::faults::MassDrop { rst: true }))
                    .devices(Selector::All),
            );
            // Every device's retry timer fires at its exact instant: devices without jitter stay in
            // lockstep.
            rig.pass(5 * MIN).await;
            rig.finish().await
        }
        Scenario::Service => {
            let rig = Rig::start(1, bugs, MIN).await;
            let d0 = fakehub::IdentityRef::from_client_id("d0");
            rig.pass(MIN).await;
            // The device's weather: an unanswered method is a 504101 in the log, not an error here.
            let _ = rig
                .hub
                .invoke_method(&d0, "reboot", serde_json::json!({"delay": 5}), 30 * SEC)
                .await;
            rig.hub
                .send_c2d("d0", fakehub::CloudMessage::new(b"firmware 1.2.3".to_vec()))
                .await
                .expect("queued");
            rig.hub
                .patch_desired(&d0, serde_json::json!({"interval": 30, "unit": "C"}))
                .await
                .expect("patched");
            rig.pass(MIN).await;
            rig.hub
                .inject(Fault::new(FaultKind::Reset(Default::default())));
            rig.hub
                .patch_desired(&d0, serde_json::json!({"unit": "F"}))
                .await
                .expect("patched");
            rig.pass(2 * MIN).await;
            rig.finish().await
        }
        Scenario::DpsThrottle => {
            let rig = DpsRig::start(bugs, |hub| {
                hub.inject(
                    Fault::new(DpsThrottle {
                        retry_after: 5 * SEC,
                        per_minute: None,
                    })
                    .lasting(30 * SEC),
                );
            })
            .await;
            rig.pass(2 * MIN).await;
            rig.finish().await
        }
        Scenario::DpsSlow => {
            let rig = DpsRig::start(bugs, |hub| {
                hub.inject(Fault::new(DpsAssigning {
                    hold: 40 * SEC,
                    retry_after: 3 * SEC,
                }));
            })
            .await;
            rig.pass(3 * MIN).await;
            rig.finish().await
        }
        Scenario::Reassignment => {
            let rig = DpsRig::start(bugs, |_| {}).await;
            rig.pass(MIN).await;
            rig.home().inject(Fault::new(HubDown::default()));
            rig.pass(3 * MIN).await;
            rig.finish().await
        }
    }
}

/// The assertions that judge each scenario.
fn expectations(scenario: Scenario) -> Vec<Expectation> {
    let yaml = match scenario {
        Scenario::TokenLife => "- renews_token: { device: d0 }\n- recovers: { device: d0, within: 60s }\n- graceful_disconnect: { device: d0 }",
        Scenario::Outage => "- backoff: { device: d0, cap: 60s }\n- no_tight_loop: { device: d0 }\n- recovers: { device: d0, within: 12m }",
        Scenario::LostAck => "- no_message_loss: { device: d0 }",
        Scenario::SessionLoss => "- resubscribes: { device: d0 }",
        Scenario::Quiet => "- keepalive: { device: d0 }\n- recovers: { device: d0, within: 60s }",
        Scenario::Fleet => "- fleet_spread: { max_per_second: 20, min_spread: 10s }",
        Scenario::Service => "- method: { device: d0, status: 200, within: 5s }\n- c2d_delivered: { device: d0, count: 1, within: 10s }\n- desired_applied: { device: d0, within: 30s }\n- recovers: { device: d0, within: 30s }",
        Scenario::DpsThrottle => "- honours_retry_after: { device: d0 }\n- provisions: { device: d0, within: 60s }",
        Scenario::DpsSlow => "- provisions: { device: d0, within: 2m }",
        Scenario::Reassignment => "- reprovisions_after: { device: d0, failures: 3, within: 1m }\n- recovers: { device: d0, within: 1m }\n- provisions: { device: d0, within: 1m }",
    };
    // `- rule: {…}` maps, as scenario files write them.
    serde_norway::with::singleton_map_recursive::deserialize(serde_norway::Deserializer::from_str(
        yaml,
    ))
    .unwrap()
}

const BUGS: [(&str, Option<Bug>, Scenario, &str); 15] = [
    ("well-behaved (token)", None, Scenario::TokenLife, ""),
    (
        "no-token-renewal",
        Some(Bug::NoTokenRenewal),
        Scenario::TokenLife,
        "renews_token",
    ),
    (
        "stale-token",
        Some(Bug::StaleToken),
        Scenario::TokenLife,
        "renews_token",
    ),
    (
        "no-disconnect",
        Some(Bug::NoDisconnect),
        Scenario::TokenLife,
        "graceful_disconnect",
    ),
    (
        "no-backoff",
        Some(Bug::NoBackoff),
        Scenario::Outage,
        "backoff",
    ),
    (
        "no-jitter",
        Some(Bug::NoJitter),
        Scenario::Outage,
        "backoff",
    ),
    (
        "lose-inflight",
        Some(Bug::LoseInflight),
        Scenario::LostAck,
        "no_message_loss",
    ),
    (
        "no-resubscribe",
        Some(Bug::NoResubscribe),
        Scenario::SessionLoss,
        "resubscribes",
    ),
    (
        "huge-keepalive",
        Some(Bug::HugeKeepalive),
        Scenario::Quiet,
        "keepalive",
    ),
    (
        "ignore-methods",
        Some(Bug::IgnoreMethods),
        Scenario::Service,
        "method",
    ),
    (
        "no-c2d-ack",
        Some(Bug::NoC2dAck),
        Scenario::Service,
        "c2d_delivered",
    ),
    (
        "ignore-desired",
        Some(Bug::IgnoreDesired),
        Scenario::Service,
        "desired_applied",
    ),
    (
        "ignore-retry-after",
        Some(Bug::IgnoreRetryAfter),
        Scenario::DpsThrottle,
        "honours_retry_after",
    ),
    (
        "short-dps-timeout",
        Some(Bug::ShortDpsTimeout),
        Scenario::DpsSlow,
        "provisions",
    ),
    (
        "no-reprovision",
        Some(Bug::NoReprovision),
        Scenario::Reassignment,
        "reprovisions_after",
    ),
];

fn verdicts(scenario: Scenario, log: &Log) -> Vec<Verdict> {
    expectations(scenario)
        .iter()
        .flat_map(|e| e.evaluate(log))
        .collect()
}

/// The records the rules and the report count (`Log::record_codes`, from the log's one fold) are
/// the Connections records connections.jsonl holds (derived event by event, each connection
/// forgotten at its close): the same events, the same codes, in order.
fn same_records(log: &Log, what: &str) -> usize {
    let counted: Vec<(u64, Option<u32>)> = log
        .record_codes()
        .map(|(e, code)| (e.seq, code.map(|c| c.code())))
        .collect();
    let written = fakehub::events::records::derive_all(
        fakehub::events::records::RecordContext::for_host("h"),
        log.events().iter().map(|e| e.as_ref()),
    );
    let written_codes: Vec<Option<u32>> = written.iter().map(|r| r.code()).collect();
    let counted_codes: Vec<Option<u32>> = counted.iter().map(|(_, c)| *c).collect();
    assert_eq!(counted_codes, written_codes, "{what}");
    counted.len()
}

#[tokio::test(start_paused = true)]
async fn every_bug_is_caught_and_the_well_behaved_device_passes_everything() {
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let scenarios = [
        Scenario::TokenLife,
        Scenario::Outage,
        Scenario::LostAck,
        Scenario::SessionLoss,
        Scenario::Quiet,
        Scenario::Service,
        Scenario::DpsThrottle,
        Scenario::DpsSlow,
        Scenario::Reassignment,
    ];
    // The well-behaved device passes every scenario's assertions (judged: a rule that cannot be
    // judged is not a pass).
    let mut records = 0;
    for s in scenarios {
        let log = run(s, &[]).await;
        records += same_records(&log, &format!("{s:?}"));
        for v in verdicts(s, &log) {
            if !v.passed {
                failures.push(format!("well-behaved device, {s:?}:\n{v}"));
            }
        }
    }
    for (name, bug, scenario, target) in BUGS.iter().filter(|b| b.1.is_some()) {
        let bug = bug.unwrap_or(Bug::NoBackoff);
        let log = run(*scenario, &[bug]).await;
        records += same_records(&log, name);
        let vs = verdicts(*scenario, &log);
        let caught: Vec<&Verdict> = vs.iter().filter(|v| v.judged && !v.passed).collect();
        let by_target = caught.iter().any(|v| v.rule == *target);
        if !by_target {
            failures.push(format!(
                "{name} in {scenario:?} was not caught by {target}: {}",
                vs.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
        let first = caught
            .iter()
            .find(|v| v.rule == *target)
            .map(|v| v.summary.clone())
            .unwrap_or_default();
        println!("{name}: caught by {target}: {first}");
        rows.push(format!(
            "| `{name}` | {scenario:?} | `{target}` | {} |",
            if by_target { "caught" } else { "MISSED" }
        ));
    }
    let table = format!(
        "| bug | scenario | assertion | result |\n|---|---|---|---|\n{}\n| well-behaved | all of the above | every assertion | passes |",
        rows.join("\n")
    );
    println!("\n{table}\n");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(
        records > 100,
        "the runs gave {records} Connections records: too few to compare"
    );
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/ASSERTIONS.md"
    ))
    .unwrap_or_default();
    assert!(
        doc.contains(&table),
        "docs/ASSERTIONS.md must contain the matrix as printed:\n{table}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fleet_spreads_its_reconnects_and_no_jitter_is_caught() {
    let well = run(Scenario::Fleet, &[]).await;
    let v = verdicts(Scenario::Fleet, &well);
    println!("well-behaved fleet: {}", v[0]);
    v[0].assert();
    let log = run(Scenario::Fleet, &[Bug::NoJitter]).await;
    let v = verdicts(Scenario::Fleet, &log);
    println!("no-jitter fleet: {}", v[0]);
    assert!(
        v[0].judged && !v[0].passed,
        "no-jitter must be caught by fleet_spread: {}",
        v[0]
    );
}

#[tokio::test(start_paused = true)]
async fn a_device_that_never_gets_back_fails_recovers_and_connected() {
    // A stale token: after the 65-minute drop every reconnect is refused.
    let rig = Rig::start(1, &[Bug::StaleToken], MIN).await;
    rig.pass(180 * MIN).await;
    // Judge the end of the run before the rig stops the device.
    let log = Log::of(&rig.hub);
    let recovers = fakehub_assert::recovers(&log, "d0", Duration::from_secs(60));
    let connected = fakehub_assert::connected(&log, "d0");
    println!("{recovers}\n{connected}");
    assert!(!recovers.passed, "{recovers}");
    assert!(
        recovers
            .summary
            .contains("never followed by a successful connect"),
        "{recovers}"
    );
    assert!(!connected.passed, "{connected}");
    rig.finish().await;
    // The well-behaved device passes both.
    let rig = Rig::start(1, &[], MIN).await;
    rig.pass(180 * MIN).await;
    let log = Log::of(&rig.hub);
    fakehub_assert::recovers(&log, "d0", Duration::from_secs(60)).assert();
    fakehub_assert::connected(&log, "d0").assert();
    rig.finish().await;
}
