//! Rust std probe for the fakehub time preload (std waits with futex through libc's syscall()).
//! Usage: rust_probe waits | idle SECONDS
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

fn event(name: &str, elapsed: Duration, expected_s: u64, ok: bool) {
    println!(
        "EVENT {name} elapsed_ns={} expected_ns={} ok={}",
        elapsed.as_nanos(),
        expected_s * 1_000_000_000,
        u8::from(ok)
    );
}

fn waits() {
    let t0 = Instant::now();
    let w0 = SystemTime::now();
    let mut handles = Vec::new();
    handles.push(thread::spawn(move || {
        thread::sleep(Duration::from_secs(10));
        event("thread_sleep", t0.elapsed(), 10, true);
    }));
    handles.push(thread::spawn(move || {
        let pair = (Mutex::new(false), Condvar::new());
        let guard = pair.0.lock().unwrap();
        let (_g, r) = pair.1.wait_timeout(guard, Duration::from_secs(20)).unwrap();
        event("condvar_wait_timeout", t0.elapsed(), 20, r.timed_out());
    }));
    handles.push(thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            thread::park_timeout(Duration::from_secs(15) - start.elapsed());
        }
        event("park_timeout", t0.elapsed(), 15, true);
    }));
    let (tx, rx) = mpsc::channel::<()>();
    handles.push(thread::spawn(move || {
        let r = rx.recv_timeout(Duration::from_secs(25));
        event("mpsc_recv_timeout", t0.elapsed(), 25, r.is_err());
    }));
    let woken = Arc::new((Mutex::new(false), Condvar::new()));
    let w2 = woken.clone();
    handles.push(thread::spawn(move || {
        let mut g = w2.0.lock().unwrap();
        while !*g {
            g = w2.1.wait(g).unwrap(); // untimed: futex without a timeout
        }
        event("condvar_notified", t0.elapsed(), 5, true);
    }));
    thread::sleep(Duration::from_secs(5));
    *woken.0.lock().unwrap() = true;
    woken.1.notify_one();
    for h in handles {
        h.join().unwrap();
    }
    drop(tx);
    let wall = w0.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    event("system_time", t0.elapsed(), 25, (25..=26).contains(&wall));
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("waits") => waits(),
        _ => {
            eprintln!("usage: rust_probe waits");
            std::process::exit(2);
        }
    }
}
