use super::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[tokio::test]
async fn jump_moves_wall_time_but_not_elapsed() {
    let start = SystemTime::UNIX_EPOCH + secs(1_700_000_000);
    let clock = VirtualClock::starting_at(start);
    let e0 = clock.elapsed();
    clock.advance(secs(3600)).await;
    let now = clock.now().duration_since(start).unwrap();
    assert!(now >= secs(3600) && now < secs(3601), "{now:?}");
    assert!(clock.elapsed() - e0 < secs(1));
}

#[tokio::test]
async fn deadlines_inside_a_jump_fire_in_order_at_their_own_time() {
    let start = SystemTime::UNIX_EPOCH + secs(1_700_000_000);
    let clock = VirtualClock::starting_at(start);
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (name, at) in [("b", 120u64), ("a", 60), ("c", 3000)] {
        let clock2 = clock.clone();
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let fired = clock2.sleep_until(start + secs(at)).await;
            let seen = clock2.now().duration_since(start).unwrap();
            log.lock().unwrap().push((name, fired.at, seen));
        }));
    }
    // Let the sleepers register.
    tokio::time::sleep(Duration::from_millis(50)).await;
    clock.advance(secs(600)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let got = log.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "only deadlines inside the jump fire: {got:?}");
    assert_eq!(got[0].0, "a");
    assert_eq!(got[1].0, "b");
    assert!(got[0].2 >= secs(60) && got[0].2 < secs(61), "{:?}", got[0]);
    assert!(
        got[1].2 >= secs(120) && got[1].2 < secs(121),
        "{:?}",
        got[1]
    );
    let after = clock.now().duration_since(start).unwrap();
    assert!(after >= secs(600) && after < secs(601));
    tasks.pop().unwrap().abort();
}

#[tokio::test]
async fn speed_scales_both_readings() {
    let clock = VirtualClock::new();
    clock.set_speed(1000.0);
    let e0 = clock.elapsed();
    let w0 = clock.now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let de = clock.elapsed() - e0;
    let dw = clock.now().duration_since(w0).unwrap();
    assert!(de >= secs(20) && de < secs(40), "{de:?}");
    assert!(dw >= secs(20) && dw < secs(40), "{dw:?}");
}

#[tokio::test]
async fn elapsed_sleep_follows_speed_changes() {
    let clock = VirtualClock::new();
    let c2 = clock.clone();
    let sleeper = tokio::spawn(async move { c2.sleep(secs(600)).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!sleeper.is_finished());
    clock.set_speed(100_000.0);
    tokio::time::timeout(Duration::from_secs(2), sleeper)
        .await
        .expect("sleep re-armed on the speed change")
        .unwrap();
}

#[tokio::test]
async fn dropped_waiter_does_not_stall_a_jump() {
    let clock = VirtualClock::new();
    let c2 = clock.clone();
    let t = tokio::spawn(async move {
        let at = c2.now() + secs(10);
        c2.sleep_until(at).await
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    t.abort();
    let _ = t.await;
    assert_eq!(clock.lock().timers.live(), 0);
    tokio::time::timeout(Duration::from_millis(500), clock.advance(secs(60)))
        .await
        .unwrap();
}

#[tokio::test]
async fn watchers_see_every_change() {
    let clock = VirtualClock::new();
    let mut w = clock.watch();
    let g0 = w.borrow_and_update().generation;
    let t0 = clock.now();
    clock.advance(secs(5)).await;
    clock.set_speed(2.0);
    assert!(w.has_changed().unwrap());
    let st = *w.borrow_and_update();
    assert_eq!(st.generation, g0 + 2);
    assert_eq!(st.speed, 2.0);
    assert!(st.now.duration_since(t0).unwrap() >= secs(5));
    // The clock started at the whole second before real time: ahead by the jump less that fraction.
    assert!(st.offset_secs() > 3.9 && st.offset_secs() < 5.1, "{st:?}");
}

#[tokio::test]
async fn a_skip_moves_both_readings_and_fires_what_it_reaches() {
    let start = SystemTime::UNIX_EPOCH + secs(1_700_000_000);
    let clock = VirtualClock::starting_at(start);
    let mut wall = clock.timer(start + secs(30));
    let mut idle = clock.timer_elapsed(secs(90));
    let mut later = clock.timer_elapsed(secs(200));
    assert_eq!(clock.next_deadline(), Some(secs(30)));
    clock.skip(secs(100));
    let w = tokio::time::timeout(Duration::from_secs(1), wall.wait()).await;
    assert_eq!(w.map(|f| f.at).ok(), Some(start + secs(30)));
    let i = tokio::time::timeout(Duration::from_secs(1), idle.wait()).await;
    let at = i.map(|f| {
        (
            f.at.duration_since(start).unwrap_or_default(),
            f.holds_jump(),
        )
    });
    assert!(
        at.as_ref()
            .is_ok_and(|(at, held)| *at >= secs(90) && *at < secs(91) && !held),
        "{at:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(50), later.wait())
            .await
            .is_err(),
        "200 s is not reached"
    );
    assert!(clock.elapsed() >= secs(100) && clock.elapsed() < secs(101));
    assert_eq!(clock.next_deadline(), Some(secs(200)));
}

#[tokio::test]
async fn a_jump_does_not_fire_elapsed_deadlines() {
    let clock = VirtualClock::new();
    let mut idle = clock.timer_elapsed(secs(60));
    clock.advance(secs(3600)).await;
    assert!(tokio::time::timeout(Duration::from_millis(50), idle.wait())
        .await
        .is_err());
}

#[tokio::test]
async fn a_deadline_in_the_past_fires_at_once() {
    let clock = VirtualClock::new();
    let mut t = clock.timer(clock.now() - secs(5));
    assert!(tokio::time::timeout(Duration::from_millis(100), t.wait())
        .await
        .is_ok());
}

/// `has_fired` says whether `wait` would return at once, before and after the wait, without
/// waiting (a live connection looks before it handles a packet already in its buffer).
#[tokio::test]
async fn has_fired_tells_a_reached_deadline_without_waiting() {
    let clock = VirtualClock::new();
    let later = clock.timer(clock.now() + secs(3600));
    let idle = clock.timer_elapsed(clock.elapsed() + secs(60));
    let mut due = clock.timer(clock.now() - secs(5));
    assert!(!later.has_fired());
    assert!(!idle.has_fired());
    assert!(
        due.has_fired(),
        "a deadline already past fires as it is registered"
    );
    let fired = due.wait().await;
    assert!(due.has_fired(), "and stays fired once waited for");
    drop(fired);
    assert!(!later.has_fired());
    clock.skip(secs(61));
    assert!(idle.has_fired(), "an elapsed deadline a skip passed");
    assert!(!later.has_fired());
}

/// Under a paused runtime the clock is a discrete-event simulator: a sleep of two hours of
/// virtual time runs every deadline in between, at its exact instant, without real waiting.
#[tokio::test(start_paused = true)]
async fn a_paused_runtime_runs_deadlines_in_virtual_time() {
    let start = SystemTime::UNIX_EPOCH + secs(1_700_000_000);
    let clock = VirtualClock::starting_at(start);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let ticker = {
        let (clock, seen) = (clock.clone(), seen.clone());
        tokio::spawn(async move {
            for i in 1..=3u64 {
                let fired = clock.sleep_until(start + secs(600 * i)).await;
                seen.lock()
                    .unwrap()
                    .push((fired.at, clock.now(), clock.elapsed()));
            }
        })
    };
    let real = std::time::Instant::now();
    clock.sleep(secs(7200)).await;
    assert!(
        real.elapsed() < Duration::from_secs(2),
        "{:?}",
        real.elapsed()
    );
    ticker.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    for (i, (at, now, elapsed)) in seen.iter().enumerate() {
        let want = secs(600 * (i as u64 + 1));
        assert_eq!(*at, start + want);
        assert_eq!(*now, start + want, "handlers run at their own instant");
        assert_eq!(*elapsed, want);
    }
    assert_eq!(clock.elapsed(), secs(7200));
}

#[tokio::test]
async fn refused_speeds_leave_the_clock_alone() {
    let clock = VirtualClock::new();
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1.0e308] {
        assert!(!clock.set_speed(bad), "{bad}");
    }
    assert_eq!(clock.speed(), 1.0);
    assert!(clock.set_speed(60.0));
}

/// A timer dropped unfired is let go lazily: it no longer counts as the next deadline, a jump
/// passes it by without waiting, and the entries of many dropped timers are swept out instead of
/// piling up (a fleet drops hundreds of thousands of keep-alive and retry timers).
#[tokio::test]
async fn dropped_timers_are_passed_over_and_swept_out() {
    let start = SystemTime::UNIX_EPOCH + secs(1_700_000_000);
    let clock = VirtualClock::starting_at(start);
    let early = clock.timer_elapsed(secs(10));
    let early_wall = clock.timer(start + secs(5));
    let mut kept = clock.timer_elapsed(secs(20));
    assert_eq!(clock.next_deadline(), Some(secs(5)));
    drop(early_wall);
    assert_eq!(clock.next_deadline(), Some(secs(10)));
    drop(early);
    assert_eq!(
        clock.next_deadline(),
        Some(secs(20)),
        "dropped deadlines do not count"
    );
    assert_eq!(clock.lock().timers.live(), 1);

    // Register and drop far more timers than the sweep threshold, a few thousand at a time, the
    // way a fleet churns them: the held entries stay bounded by a multiple of the live ones.
    let mut most = 0;
    for round in 0..20u64 {
        let batch: Vec<Timer> = (0..3000u64)
            .map(|i| clock.timer_elapsed(secs(1000 + round * 3000 + i)))
            .collect();
        drop(batch);
        most = most.max(clock.lock().timers.entries());
    }
    assert!(most <= 3 * 3000 + 1, "entries held at most: {most}");
    assert_eq!(clock.lock().timers.live(), 1);
    assert_eq!(clock.next_deadline(), Some(secs(20)));

    // A jump past abandoned wall deadlines does not wait for them, and time flowing to the live
    // one still fires it at its instant.
    let abandoned: Vec<Timer> = (1..=5).map(|i| clock.timer(start + secs(i))).collect();
    drop(abandoned);
    tokio::time::timeout(Duration::from_millis(500), clock.advance(secs(60)))
        .await
        .expect("the jump does not wait for dropped timers");
    clock.skip(secs(20));
    let fired = tokio::time::timeout(Duration::from_secs(1), kept.wait()).await;
    assert!(fired.is_ok(), "the live deadline fired");
}
