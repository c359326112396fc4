"""Python probe for the fakehub time preload. Usage: python3 waits.py waits | clocks | idle SECONDS"""
import queue
import select
import selectors
import socket
import sys
import threading
import time

t0 = time.monotonic_ns()
SEC = 1_000_000_000


def event(name, **fields):
    parts = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"EVENT {name} {parts}", flush=True)


def paho_like_loop(stop, stats):
    """A network thread like paho-mqtt's loop_forever: select() with a 1 s timeout, over and over."""
    a, b = socket.socketpair()
    while not stop.is_set():
        start = time.monotonic_ns()
        select.select([a], [], [], 1.0)
        late = time.monotonic_ns() - start - SEC
        stats["n"] += 1
        stats["sum"] += late
        stats["max"] = max(stats["max"], late)
    a.close()
    b.close()


def timed(name, expected_s, fn, before=None):
    start = time.monotonic_ns()
    if before is not None:
        before()  # started after `start`: what it does after its own sleep comes after start + sleep
    ok = fn()
    event(name, elapsed_ns=time.monotonic_ns() - start, expected_ns=int(expected_s * SEC), ok=1 if ok else 0)


def mode_waits():
    stop = threading.Event()
    stats = {"n": 0, "sum": 0, "max": 0}
    net = threading.Thread(target=paho_like_loop, args=(stop, stats))
    net.start()

    timed("event_wait", 60, lambda: threading.Event().wait(60) is False)
    timed("time_sleep", 30, lambda: time.sleep(30) is None)

    a, b = socket.socketpair()
    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ)
    timed("selectors_select", 20, lambda: sel.select(timeout=20) == [])
    timed("select_select", 3, lambda: select.select([a], [], [], 3) == ([], [], []))

    def queue_get():
        try:
            queue.Queue().get(timeout=10)
            return False
        except queue.Empty:
            return True

    timed("queue_get", 10, queue_get)
    held = threading.Lock()
    held.acquire()
    timed("lock_acquire", 5, lambda: held.acquire(timeout=5) is False)
    cond = threading.Condition()

    def cond_wait():
        with cond:
            return cond.wait(7) is False

    timed("condition_wait", 7, cond_wait)

    # woken early: an Event set by another thread after 4 s of its own sleep
    ev = threading.Event()
    setter = threading.Thread(target=lambda: (time.sleep(4), ev.set()))
    timed("event_set_by_thread", 4, lambda: ev.wait(100) is True, before=setter.start)

    # a socket readable after 2 s, while selectors waits up to 100 s
    sender = threading.Thread(target=lambda: (time.sleep(2), b.send(b"x")))
    timed("selectors_woken", 2, lambda: len(sel.select(timeout=100)) == 1, before=sender.start)
    setter.join()
    sender.join()

    stop.set()
    net.join()
    event("net_loop", loops=stats["n"], max_late_ns=stats["max"], ok=1)


def mode_clocks():
    event("clocks", time_ns=time.time_ns(), monotonic_ns=time.monotonic_ns(), ok=1)


def mode_idle(seconds):
    """An idle SDK-like program: a network thread in select(timeout=1), the main thread in Event.wait."""
    stop = threading.Event()
    stats = {"n": 0, "sum": 0, "max": 0}
    net = threading.Thread(target=paho_like_loop, args=(stop, stats))
    net.start()
    start = time.monotonic_ns()
    threading.Event().wait(seconds)
    late = time.monotonic_ns() - start - seconds * SEC
    stop.set()
    net.join()
    n = max(stats["n"], 1)
    event("idle", elapsed_ns=time.monotonic_ns() - t0, wait_late_ns=late, loops=stats["n"],
          max_late_ns=stats["max"], mean_late_ns=stats["sum"] // n, ok=1)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "waits":
        mode_waits()
    elif mode == "clocks":
        mode_clocks()
    elif mode == "idle" and len(sys.argv) > 2:
        mode_idle(int(sys.argv[2]))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
