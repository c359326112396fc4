//! The Rust API on its own: creating the clock file, the anchor, the tables, quiescence of plain
//! (unpreloaded) processes, the embedded preload and its pass-through behaviour.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fakehub_proctime::{
    layout, Anchor, ClockShm, Error, Limits, Preload, Quiescence, ShmOptions, PRELOAD_SO,
};

fn limits() -> Limits {
    Limits {
        max_processes: 4,
        max_threads: 16,
    }
}

#[test]
fn create_writes_the_documented_header() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("clock");
    let shm = ClockShm::create(&path, limits()).expect("create");
    let bytes = std::fs::read(&path).expect("read");
    assert_eq!(bytes.len(), layout::file_size(4, 16).expect("size"));
    assert_eq!(bytes.len(), 128 + 4 * 16 + 16 * 32);
    assert_eq!(&bytes[0..8], b"FHCLOCK1");
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let i64_at = |o: usize| i64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
    assert_eq!(u32_at(8), 2);
    assert_eq!(u32_at(12), 128);
    assert_eq!(u32_at(16), 4);
    assert_eq!(u32_at(20), 16);
    assert_eq!(u32_at(24), 16);
    assert_eq!(u32_at(28), 32);
    assert_eq!(u32_at(32) as i32, libc::SIGRTMAX() - 2);
    assert_eq!(i64_at(40), 2_000_000);
    assert_eq!(i64_at(48), 50_000_000);
    assert_eq!(i64_at(56) % 2, 0, "seqlock even after publishing");
    let a = shm.anchor();
    assert_eq!(i64_at(64), a.real_mono_ns);
    assert_eq!(i64_at(72), a.virt_mono_ns);
    assert_eq!(i64_at(80), a.virt_wall_ns);
    assert_eq!(f64::from_bits(i64_at(88) as u64), 1.0);
    assert_eq!(u32_at(96), 0, "no thread slot claimed yet");
    // virtual time starts equal to real time
    let now = shm.now();
    assert!((now.virt_mono_ns - now.real_mono_ns).abs() < 1_000_000);
    assert!((now.virt_wall_ns - fakehub_proctime::real_wall_ns()).abs() < 50_000_000);
}

#[test]
fn create_rejects_bad_settings() {
    let dir = tempfile::tempdir().expect("dir");
    let p = dir.path().join("clock");
    for l in [
        Limits {
            max_processes: 0,
            max_threads: 1,
        },
        Limits {
            max_processes: 1,
            max_threads: 0,
        },
        Limits {
            max_processes: 65_537,
            max_threads: 1,
        },
        Limits {
            max_processes: 1,
            max_threads: (1 << 20) + 1,
        },
    ] {
        assert!(
            matches!(ClockShm::create(&p, l), Err(Error::InvalidLimits(_))),
            "{l:?}"
        );
    }
    for o in [
        ShmOptions {
            wake_signal: libc::SIGUSR1,
            ..ShmOptions::default()
        },
        ShmOptions {
            condvar_slice: Duration::from_micros(10),
            ..ShmOptions::default()
        },
        ShmOptions {
            other_slice: Duration::from_secs(11),
            ..ShmOptions::default()
        },
    ] {
        assert!(
            matches!(
                ClockShm::create_with(&p, limits(), o),
                Err(Error::InvalidOptions(_))
            ),
            "{o:?}"
        );
    }
    assert!(matches!(
        ClockShm::create(dir.path().join("no/such/dir/clock"), limits()),
        Err(Error::Io { .. })
    ));
}

#[test]
fn anchors_are_validated_and_rebased_without_a_jump() {
    let dir = tempfile::tempdir().expect("dir");
    let shm = ClockShm::create(dir.path().join("clock"), limits()).expect("create");
    for speed in [f64::NAN, f64::INFINITY, -1.0, 1e13] {
        let a = Anchor {
            speed,
            ..shm.anchor()
        };
        assert!(
            matches!(shm.publish(a), Err(Error::InvalidAnchor(_))),
            "{speed}"
        );
    }
    assert_eq!(
        shm.anchor().speed,
        1.0,
        "a rejected anchor leaves the old one"
    );

    let before = shm.now();
    let a = shm.set_speed(50.0).expect("speed");
    assert_eq!(a.speed, 50.0);
    assert!(
        a.virt_mono_ns >= before.virt_mono_ns && a.virt_mono_ns - before.virt_mono_ns < 50_000_000
    );
    std::thread::sleep(Duration::from_millis(20));
    let later = shm.now();
    let flowed = later.virt_mono_ns - a.virt_mono_ns;
    assert!(
        (50 * 20_000_000..50 * 200_000_000).contains(&flowed),
        "{flowed}"
    );

    let b = shm.skip_to(later.virt_mono_ns + 3600 * SEC).expect("skip");
    assert!(b.virt_mono_ns >= later.virt_mono_ns + 3600 * SEC);
    assert_eq!(
        b.virt_wall_ns - b.virt_mono_ns,
        a.virt_wall_ns - a.virt_mono_ns,
        "both clocks moved"
    );
    let c = shm.skip_to(0).expect("skip back is a no-op");
    assert!(c.virt_mono_ns >= b.virt_mono_ns);

    let d = shm.jump_wall(-7 * SEC).expect("jump");
    assert_eq!(
        d.virt_wall_ns - d.virt_mono_ns,
        c.virt_wall_ns - c.virt_mono_ns - 7 * SEC,
        "only the wall clock moved"
    );
    // arithmetic saturates instead of overflowing
    shm.publish(Anchor {
        real_mono_ns: 0,
        virt_mono_ns: i64::MAX - 5,
        virt_wall_ns: i64::MIN,
        speed: 1e12,
    })
    .expect("extreme anchor");
    let n = shm.now();
    assert_eq!(n.virt_mono_ns, i64::MAX);
    assert_eq!(
        shm.skip_to(i64::MAX).expect("skip to the end").virt_mono_ns,
        i64::MAX
    );
    let before = shm.now().virt_wall_ns;
    let j = shm.jump_wall(i64::MIN).expect("jump far back");
    assert!(j.virt_wall_ns <= before);
    shm.publish(Anchor {
        real_mono_ns: i64::MAX,
        virt_mono_ns: 0,
        virt_wall_ns: i64::MIN + 5,
        speed: 1.0,
    })
    .expect("an anchor in the future");
    assert_eq!(
        shm.jump_wall(i64::MIN)
            .expect("and further back")
            .virt_wall_ns,
        i64::MIN
    );
}

#[test]
fn seqlock_readers_never_see_a_torn_anchor() {
    let dir = tempfile::tempdir().expect("dir");
    let shm = Arc::new(ClockShm::create(dir.path().join("clock"), limits()).expect("create"));
    // The file's first anchor (the real clocks) does not satisfy the readers' invariants: publish
    // one that does before any reader starts.
    shm.publish(Anchor {
        real_mono_ns: 0,
        virt_mono_ns: 0,
        virt_wall_ns: 0,
        speed: 0.0,
    })
    .expect("first anchor");
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (shm, stop) = (shm.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let a = shm.anchor();
                    // every published anchor satisfies these invariants
                    assert_eq!(a.virt_wall_ns, a.virt_mono_ns.wrapping_mul(3));
                    assert_eq!(a.speed, (a.virt_mono_ns % 1000) as f64);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let start = Instant::now();
    let mut i: i64 = 0;
    while start.elapsed() < Duration::from_millis(300) {
        i += 1;
        shm.publish(Anchor {
            real_mono_ns: i,
            virt_mono_ns: i,
            virt_wall_ns: i * 3,
            speed: (i % 1000) as f64,
        })
        .expect("publish");
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().expect("reader") > 0);
    }
}

#[test]
fn env_appends_the_preload() {
    let dir = tempfile::tempdir().expect("dir");
    let shm = ClockShm::create(dir.path().join("clock"), limits()).expect("create");
    let p = Path::new("/x/libfakehub_time.so");
    let env = shm.env_appending(p, Some(OsStr::new("/other/lib.so")));
    assert_eq!(env[0].0, "LD_PRELOAD");
    assert_eq!(env[0].1, "/other/lib.so:/x/libfakehub_time.so");
    assert_eq!(env[1].0, "FAKEHUB_CLOCK_SHM");
    assert_eq!(env[1].1, shm.path().as_os_str());
    assert_eq!(shm.env_appending(p, None)[0].1, "/x/libfakehub_time.so");
    assert_eq!(
        shm.env_appending(p, Some(OsStr::new("")))[0].1,
        "/x/libfakehub_time.so"
    );
}

#[test]
fn preload_is_written_as_an_executable_shared_object() {
    if !Preload::is_built() {
        assert!(matches!(
            Preload::write_to("/tmp"),
            Err(Error::PreloadNotBuilt)
        ));
        skip("the preload was not built");
        return;
    }
    assert_eq!(
        Error::PreloadNotBuilt.to_string(),
        "the fakehub time preload was not built: no C compiler"
    );
    let dir = tempfile::tempdir().expect("dir");
    let path = Preload::write_to(dir.path()).expect("write");
    assert_eq!(path, dir.path().join("libfakehub_time.so"));
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&path).expect("meta");
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    let bytes = std::fs::read(&path).expect("read");
    assert_eq!(bytes, PRELOAD_SO);
    assert_eq!(&bytes[..4], b"\x7fELF");
    // written again over itself (atomically replaced)
    assert_eq!(Preload::write_to(dir.path()).expect("rewrite"), path);
    assert!(matches!(
        Preload::write_to(dir.path().join("missing")),
        Err(Error::Io { .. })
    ));
}

#[test]
fn process_table_and_quiescence_of_plain_processes() {
    let _s = serial();
    let dir = tempfile::tempdir().expect("dir");
    let shm = ClockShm::create(
        dir.path().join("clock"),
        Limits {
            max_processes: 2,
            max_threads: 8,
        },
    )
    .expect("create");
    assert_eq!(
        shm.quiescence(&[]),
        Quiescence::Idle {
            next_deadline_virt_mono_ns: None
        }
    );

    // a process that only sleeps in an unwrapped call (no preload): an untimed wait
    let mut sleeper = Command::new("sleep")
        .arg("1000")
        .stdin(Stdio::null())
        .spawn()
        .expect("sleep");
    shm.register_process(sleeper.id() as i32).expect("register");
    let start = Instant::now();
    while shm.quiescence(&[])
        != (Quiescence::Idle {
            next_deadline_virt_mono_ns: None,
        })
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "sleep(1) never looked idle"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // a busy process: this test's own (running) thread
    let me = std::process::id() as i32;
    shm.register_process(me).expect("register self");
    assert_eq!(shm.quiescence(&[]), Quiescence::Busy);
    assert!(matches!(
        shm.register_process(1),
        Err(Error::ProcessTableFull(2))
    ));
    assert!(matches!(
        shm.register_process(0),
        Err(Error::InvalidOptions(_))
    ));
    let pids: Vec<i32> = shm.processes().iter().map(|p| p.pid).collect();
    assert!(pids.contains(&me) && pids.contains(&(sleeper.id() as i32)));
    assert!(shm
        .processes()
        .iter()
        .all(|p| p.registered_by_hub && !p.preload));

    // a busy extra thread of this process keeps it busy, a sleeping one does not
    let busy = Arc::new(AtomicBool::new(true));
    let (tx, rx) = std::sync::mpsc::channel();
    let b2 = busy.clone();
    let spinner = std::thread::spawn(move || {
        let _ = tx.send(fakehub_proctime::current_tid());
        while b2.load(Ordering::Relaxed) {
            std::hint::spin_loop();
        }
    });
    let spin_tid = rx.recv().expect("tid");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    // self is still registered (busy); drop it by using a fresh file for the extra-thread checks
    let shm2 = ClockShm::create(dir.path().join("clock2"), limits()).expect("create");
    assert_eq!(shm2.quiescence(&[spin_tid]), Quiescence::Busy);
    busy.store(false, Ordering::Relaxed);
    spinner.join().expect("join");
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ttx, trx) = std::sync::mpsc::channel();
    let parked = std::thread::spawn(move || {
        let _ = ttx.send(fakehub_proctime::current_tid());
        let _ = rx.recv();
    });
    let parked_tid = trx.recv().expect("tid");
    let start = Instant::now();
    while shm2.quiescence(&[parked_tid]) == Quiescence::Busy {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "a blocked thread never looked idle"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(tx);
    parked.join().expect("join");

    // the killed sleeper is dropped from the table at the next look
    let _ = shm.quiescence(&[]);
    assert!(!shm.processes().iter().any(|p| p.pid == sleeper.id() as i32));
}

#[test]
fn without_a_usable_clock_file_the_preload_passes_through() {
    let _s = serial();
    let Some(h) = Harness::new() else { return };
    let Some(bin) = compile_c(&h, "waits.c") else {
        return;
    };
    let bad = h.dir.path().join("bad-clock");
    std::fs::write(&bad, vec![0u8; 4096]).expect("write");
    for (what, value, expect) in [
        ("unset", None, "FAKEHUB_CLOCK_SHM is not set"),
        (
            "missing",
            Some(h.dir.path().join("nope")),
            "cannot open the clock file",
        ),
        ("wrong magic", Some(bad), "wrong magic"),
    ] {
        let mut cmd = Command::new(&bin);
        cmd.arg("clocks")
            .env("LD_PRELOAD", &h.preload)
            .env_remove("FAKEHUB_CLOCK_SHM");
        if let Some(v) = value {
            cmd.env("FAKEHUB_CLOCK_SHM", v);
        }
        h.set_epoch(1.0); // the shared file says 2030; a pass-through process must not see it
        let out = cmd.output().expect("run");
        assert!(out.status.success(), "{what}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{what}: {stderr}");
        assert!(stderr.contains(expect), "{what}: {stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let realtime: i64 = stdout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("realtime="))
            .and_then(|v| v.parse().ok())
            .expect("realtime field");
        assert!(
            (realtime - fakehub_proctime::real_wall_ns()).abs() < 10 * SEC,
            "{what}: not real time"
        );
    }
}
