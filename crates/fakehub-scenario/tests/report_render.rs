//! The HTML run report: its structure from a hand-built event log, and a real render in headless
//! Chromium (installed from Debian when missing) whose screenshot is checked for content.

use fakehub_scenario::report;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fakehub::events::{AuthKind, FaultAction};
use fakehub::{CloseCause, CloseHow, Closer, Event, EventKind};
use fakehub_assert::{Log, Verdict};

const EVIL: &str = "<evil>&\"x\"";

/// Builds a log in time order, keeping the `connected_devices` count as the hub would.
struct LogBuilder {
    start: SystemTime,
    events: Vec<Arc<Event>>,
    connected: BTreeSet<String>,
}

impl LogBuilder {
    fn new() -> Self {
        LogBuilder {
            // 2024-05-01T10:00:00Z
            start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_557_600),
            events: Vec::new(),
            connected: BTreeSet::new(),
        }
    }

    fn push(&mut self, secs: u64, conn: Option<u64>, device: Option<&str>, kind: EventKind) {
        let elapsed = Duration::from_secs(secs);
        let time = self.start + elapsed;
        assert!(
            self.events.last().is_none_or(|e| e.time <= time),
            "events in time order"
        );
        self.events.push(Arc::new(Event {
            seq: self.events.len() as u64,
            time,
            elapsed,
            conn,
            device: device.map(Into::into),
            module: None,
            hub: None,
            kind,
        }));
    }

    fn count_changed(&mut self, secs: u64) {
        let count = self.connected.len();
        self.push(secs, None, None, EventKind::ConnectedDevices { count });
    }

    /// TCP accept, CONNECT and the hub's CONNACK: `refusal` (result code, reason) when `code` ≠ 0.
    fn connect(
        &mut self,
        secs: u64,
        conn: u64,
        device: &str,
        code: u8,
        refusal: Option<(u32, &str)>,
    ) {
        self.push(
            secs,
            Some(conn),
            None,
            EventKind::Accepted {
                peer: format!("10.0.{}.{}:50000", conn / 256, conn % 256)
                    .parse()
                    .unwrap(),
            },
        );
        self.push(
            secs,
            Some(conn),
            Some(device),
            EventKind::Connect {
                client_id: device.to_owned(),
                username: format!("fakehub.azure-devices.net/{device}/?api-version=2021-04-12"),
                keep_alive: 60,
                clean_session: false,
                auth: AuthKind::Sas,
                sdk: Some("azure-iot-device-iothub-py/2.14.0".into()),
                token_expiry: Some(self.start + Duration::from_secs(secs + 3600)),
                will: false,
            },
        );
        self.push(
            secs,
            Some(conn),
            Some(device),
            EventKind::Connack {
                code,
                session_present: false,
                result: refusal.map(|r| r.0.into()),
                reason: refusal.map(|r| r.1.to_owned()),
            },
        );
    }

    /// A CONNECT the hub accepted.
    fn session(&mut self, secs: u64, conn: u64, device: &str) {
        self.connect(secs, conn, device, 0, None);
        self.connected.insert(device.to_owned());
        self.count_changed(secs);
    }

    /// A CONNECT refused with CONNACK 3 during an outage, then the hub's close.
    fn refused(&mut self, secs: u64, conn: u64, device: &str) {
        let reason = "the hub is in an outage (server unavailable)";
        self.connect(secs, conn, device, 3, Some((500001, reason)));
        self.push(
            secs,
            Some(conn),
            Some(device),
            EventKind::Closed {
                by: Closer::Hub,
                how: CloseHow::Fin,
                cause: CloseCause::Refused,
                detail: None,
                result: None,
            },
        );
    }

    fn close(
        &mut self,
        secs: u64,
        conn: u64,
        device: &str,
        (by, how, cause): (Closer, CloseHow, CloseCause),
        detail: Option<&str>,
    ) {
        if cause == CloseCause::DeviceDisconnect {
            self.push(secs, Some(conn), Some(device), EventKind::DisconnectPacket);
        }
        self.push(
            secs,
            Some(conn),
            Some(device),
            EventKind::Closed {
                by,
                how,
                cause,
                detail: detail.map(str::to_owned),
                result: None,
            },
        );
        self.connected.remove(device);
        self.count_changed(secs);
    }

    fn fault(&mut self, secs: u64, id: u64, action: FaultAction, name: &str) {
        self.push(
            secs,
            None,
            None,
            EventKind::Fault {
                id,
                action,
                fault: name.to_owned(),
                detail: None,
            },
        );
    }
}

/// A 90-minute run of four devices: `sensor-a` is dropped for token expiry at 65 min and comes
/// back; `sensor-b` is dropped by an outage (20–30 min) and refused twice during it; `sensor-c`
/// leaves gracefully; the oddly named one resets its socket.
fn scenario_log() -> Log {
    let mut b = LogBuilder::new();
    b.push(
        0,
        None,
        None,
        EventKind::HubStarted {
            listen: "127.0.0.1:8883".parse().unwrap(),
            host_name: "fakehub.azure-devices.net".into(),
        },
    );
    b.session(5, 1, "sensor-a");
    b.session(10, 2, "sensor-b");
    b.session(15, 3, "sensor-c");
    b.session(120, 4, EVIL);

    // How each connection ends: (who closed, how, why).
    let outage_drop = (Closer::Hub, CloseHow::Fin, CloseCause::Fault);
    let graceful = (
        Closer::Device,
        CloseHow::Disconnect,
        CloseCause::DeviceDisconnect,
    );
    let reset = (Closer::Device, CloseHow::Rst, CloseCause::DeviceClosed);
    let expired = (Closer::Hub, CloseHow::Fin, CloseCause::TokenExpired);

    b.fault(1200, 1, FaultAction::Started, "outage");
    b.close(1200, 2, "sensor-b", outage_drop, Some("outage"));
    b.refused(1260, 5, "sensor-b");
    b.refused(1440, 6, "sensor-b");
    b.fault(1800, 1, FaultAction::Ended, "outage");
    b.session(1830, 7, "sensor-b");

    b.close(2700, 3, "sensor-c", graceful, None);
    b.close(3000, 4, EVIL, reset, Some("<script>alert(1)</script>"));
    // The <evil> device's process was killed: the runner records it.
    b.push(
        3000,
        None,
        Some(EVIL),
        EventKind::DeviceProcess {
            action: "crashed".into(),
            code: None,
            signal: Some(9),
        },
    );
    b.fault(3300, 2, FaultAction::Started, "latency");
    b.fault(3600, 2, FaultAction::Ended, "latency");
    b.close(3900, 1, "sensor-a", expired, Some("the SAS token expired"));
    b.session(3903, 8, "sensor-a");

    let shutdown = (Closer::Hub, CloseHow::Fin, CloseCause::HubShutdown);
    b.close(5400, 7, "sensor-b", shutdown, None);
    b.close(5400, 8, "sensor-a", shutdown, None);
    b.push(5400, None, None, EventKind::HubStopped);
    Log::new(b.events)
}

fn verdict(device: Option<&str>, passed: bool, summary: &str, excerpt: Vec<String>) -> Verdict {
    Verdict {
        rule: "rule".into(),
        device: device.map(str::to_owned),
        passed,
        judged: true,
        summary: summary.into(),
        excerpt,
    }
}

/// The lines a failing rule shows around the token-expiry close (as `Log::excerpt` formats them).
fn expiry_excerpt(log: &Log) -> Vec<String> {
    let at = |secs: u64| log.at(log.start() + Duration::from_secs(secs));
    vec![
        format!("  {} sensor-a     CONNACK 0 (session present false)", at(5)),
        format!("  {} hub          fault latency Started", at(3300)),
        format!("  {} hub          fault latency Ended", at(3600)),
        format!(
            "▶ {} sensor-a     closed by Hub (Fin, TokenExpired): the SAS token expired",
            at(3900)
        ),
        format!(
            "  {} sensor-a     CONNECT (keep-alive 60s, clean false)",
            at(3903)
        ),
    ]
}

fn scenario_verdicts(log: &Log) -> Vec<(String, Verdict)> {
    vec![
        (
            "recovers: { within: 60s }".into(),
            verdict(Some("sensor-a"), true, "back 3.000s after the drop at 1:05:00.000", vec![]),
        ),
        (
            "renews_token".into(),
            verdict(
                Some("sensor-a"),
                false,
                "the hub closed the connection for token expiry at 1:05:00.000; no renewal before it",
                expiry_excerpt(log),
            ),
        ),
        (
            "backoff: { first_at_most: 60s }".into(),
            verdict(Some("sensor-b"), true, "2 refused attempts, first after 60s", vec![]),
        ),
        (
            "graceful_disconnect".into(),
            verdict(Some("sensor-c"), true, "DISCONNECT before the close", vec![]),
        ),
        (
            "records: { code: 404104, max: 10 }".into(),
            verdict(None, true, "5 records with 404104 (at most 10)", vec![]),
        ),
    ]
}

const TITLE: &str = "Token expiry & outage <drill>";

#[test]
fn report_has_the_expected_structure() {
    let log = scenario_log();
    let verdicts = scenario_verdicts(&log);
    let html = report::render_html(TITLE, &log, &verdicts);

    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.trim_end().ends_with("</html>"));
    assert_eq!(html.matches("<svg xmlns").count(), 1, "one timeline SVG");
    // Self-contained: no script and nothing fetched.
    for forbidden in ["<script", "src=", "href=", "@import", "url("] {
        assert!(!html.contains(forbidden), "report contains {forbidden:?}");
    }

    // Header: title escaped, overall FAIL, span, devices, result codes.
    assert!(html.contains("Token expiry &amp; outage &lt;drill&gt;"));
    assert!(html.contains("id=\"verdict\">FAIL<"));
    assert!(html.contains("4 of 5 passed"));
    assert!(html.contains("1h 30m"), "run span");
    assert!(html.contains("<span class=\"k\">devices</span>4<"));
    for code in ["404104 ×5", "500001 ×2", "401003 ×1"] {
        assert!(html.contains(code), "result code count {code}");
    }

    // Timeline: one row per device (the odd id escaped), closes, refusals, faults, axis.
    assert_eq!(html.matches("<g class=\"row\"").count(), 4);
    for id in [
        "sensor-a",
        "sensor-b",
        "sensor-c",
        "&lt;evil&gt;&amp;&quot;x&quot;",
    ] {
        assert!(html.contains(&format!("data-device=\"{id}\"")), "row {id}");
    }
    assert!(!html.contains(EVIL), "raw device id leaked");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert_eq!(
        html.matches("class=\"close\"").count(),
        6,
        "closed sessions"
    );
    assert_eq!(html.matches("<g class=\"refused\"").count(), 2);
    assert_eq!(
        html.matches("<g class=\"process\"").count(),
        1,
        "the crash is marked"
    );
    assert!(html.contains("device process crashed (signal 9) at 50:00.000"));
    assert_eq!(html.matches("<g class=\"fault\"").count(), 2);
    assert!(html.contains(">outage</text>") && html.contains(">latency</text>"));
    assert!(html.contains("fault outage (#1): 20:00.000 → 30:00.000"));
    for tick in [">0m<", ">10m<", ">1h00m<", ">1h30m<"] {
        assert!(html.contains(tick), "tick {tick}");
    }
    assert!(html.contains("#f08c00"), "token-expiry orange");
    assert!(html.contains("id=\"connected-devices\""));

    // Expectations: every row, the failing one with its excerpt.
    assert!(html.contains("<code>recovers: { within: 60s }</code>"));
    assert!(html.contains("<code>fleet</code>"));
    assert_eq!(html.matches("<td class=\"result fail\">FAIL").count(), 1);
    assert_eq!(html.matches("<td class=\"result pass\">PASS").count(), 4);
    let excerpt = expiry_excerpt(&log);
    assert_eq!(html.matches("<pre>").count(), 1);
    for line in &excerpt {
        assert!(html.contains(line.as_str()), "excerpt line {line:?}");
    }
}

#[test]
fn passing_run_says_pass() {
    let log = scenario_log();
    let verdicts = vec![(
        "connected".to_owned(),
        verdict(Some("sensor-a"), true, "connected at 00:05.000", vec![]),
    )];
    let html = report::render_html("ok", &log, &verdicts);
    assert!(html.contains("id=\"verdict\">PASS<"));
    assert!(!html.contains("<pre>"));
}

#[test]
fn empty_log_still_renders() {
    let html = report::render_html("nothing happened", &Log::new(Vec::new()), &[]);
    assert!(html.contains("id=\"verdict\">PASS<"));
    assert!(html.contains("<svg xmlns") && html.contains("No expectations."));
    assert_eq!(html.matches("<g class=\"row\"").count(), 0);
}

#[test]
fn large_fleet_caps_rows_but_charts_everyone() {
    let mut b = LogBuilder::new();
    for i in 0..120u64 {
        b.session(i, i + 1, &format!("dev-{i:04}"));
    }
    b.fault(600, 1, FaultAction::Started, "mass_drop");
    for i in 0..120u64 {
        let close = (Closer::Hub, CloseHow::Rst, CloseCause::Fault);
        b.close(600, i + 1, &format!("dev-{i:04}"), close, None);
    }
    b.fault(600, 1, FaultAction::Ended, "mass_drop");
    for i in 0..120u64 {
        b.session(630 + i * 2, 200 + i, &format!("dev-{i:04}"));
    }
    let log = Log::new(b.events);
    // A failing device beyond the first 40 is still drawn.
    let verdicts = vec![(
        "recovers: { within: 60s }".to_owned(),
        verdict(
            Some("dev-0100"),
            false,
            "back after 300s",
            vec!["  …".into()],
        ),
    )];
    let html = report::render_html("fleet", &log, &verdicts);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report_render");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("fleet.html"), &html).unwrap();
    assert_eq!(html.matches("<g class=\"row\"").count(), 40);
    assert!(html.contains("data-device=\"dev-0100\""));
    assert!(!html.contains("data-device=\"dev-0039\""));
    assert!(html.contains(">+80 more<"));
    assert!(html.contains("<span class=\"k\">devices</span>120<"));
    assert!(html.contains("(peak 120)"));
}

// ---------------------------------------------------------------------------------------------
// The real render

const CHROMIUM: &str = "/usr/bin/chromium";

/// Debian's chromium, installed if missing (the tests run as root).
fn chromium() -> &'static Path {
    if !Path::new(CHROMIUM).exists() {
        let install = || {
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "chromium"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success())
        };
        if !install() {
            // The package lists may be missing or stale on a fresh machine.
            let _ = Command::new("apt-get")
                .args(["update", "-qq"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
            install();
        }
    }
    assert!(
        Path::new(CHROMIUM).exists(),
        "chromium is not installed and `apt-get install -y chromium` failed; install it to run this test"
    );
    Path::new(CHROMIUM)
}

/// Render `html_path` in headless Chromium and return the screenshot's path and how long it took.
fn screenshot(html_path: &Path, out_dir: &Path) -> (PathBuf, Duration) {
    let browser = chromium();
    let shot = out_dir.join("shot.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let log_path = out_dir.join("chromium.log");
    let started = Instant::now();
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--window-size=1400,1000")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", html_path.display()))
        .stdin(Stdio::null())
        .stdout(File::create(&log_path).unwrap())
        .stderr(File::create(out_dir.join("chromium.err")).unwrap())
        .spawn()
        .expect("start chromium");
    let deadline = started + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within 60 s; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    assert!(
        status.success(),
        "chromium failed ({status}); see {}",
        out_dir.join("chromium.err").display()
    );
    (shot, took)
}

/// The screenshot's pixels as RGB triples, with its size.
fn decode_rgb(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let mut decoder = png::Decoder::new(File::open(path).expect("screenshot exists"));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let samples = info.color_type.samples();
    assert!(samples >= 3, "colour screenshot, got {:?}", info.color_type);
    let pixels = buf[..info.buffer_size()]
        .chunks_exact(samples)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    (info.width, info.height, pixels)
}

fn hex(rgb: &str) -> [u8; 3] {
    let v = u32::from_str_radix(rgb.trim_start_matches('#'), 16).unwrap();
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

fn count_near(pixels: &[[u8; 3]], want: [u8; 3]) -> usize {
    pixels
        .iter()
        .filter(|p| p.iter().zip(want).all(|(a, b)| a.abs_diff(b) <= 6))
        .count()
}

#[test]
fn report_renders_in_headless_chromium() {
    let log = scenario_log();
    let html = report::render_html(TITLE, &log, &scenario_verdicts(&log));
    // Kept under the target directory so the page and its screenshot can be looked at afterwards.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report_render");
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("report.html");
    std::fs::write(&page, &html).unwrap();

    let (shot, took) = screenshot(&page, &dir);
    println!("chromium rendered {} in {took:.2?}", shot.display());

    let (w, h, pixels) = decode_rgb(&shot);
    assert_eq!((w, h), (1400, 1000), "screenshot size");
    let ink = pixels.iter().filter(|p| p.iter().any(|&c| c < 235)).count();
    let ink_fraction = ink as f64 / pixels.len() as f64;
    assert!(
        ink_fraction > 0.04,
        "the page looks blank: {:.1}% non-white pixels",
        ink_fraction * 100.0
    );
    // Colours of the palette, with how many pixels each needs at least. The connected bars and
    // the step line cover large areas, so they prove the timeline itself was drawn (the legend's
    // swatches alone are far smaller).
    // Each close marker is 4×18 px, its legend swatch 4×16 px; the fault bands are red at 10 %
    // over white (#fceaea) across the rows and the chart, their swatch 18×14 px.
    for (name, colour, at_least) in [
        ("connected bars", "#8fa9c8", 20_000),
        ("connected-devices line", "#1864ab", 1_500),
        ("fault bands", "#fceaea", 5_000),
        ("token-expiry orange", "#f08c00", 100),
        ("device-closed dark red", "#7a1f1f", 100),
        ("fault red", "#e03131", 100),
    ] {
        let n = count_near(&pixels, hex(colour));
        println!("{name} {colour}: {n} px");
        assert!(
            n >= at_least,
            "{name} ({colour}): {n} pixels, expected at least {at_least}"
        );
    }
    println!("non-white: {:.1}%", ink_fraction * 100.0);
}
