"""Tests of the fakehub time-warp shim (sitecustomize.py + fakehub_clock.py), without a hub.

Each test writes a clock file, starts a child Python with the shim active (PYTHONPATH=this
folder, FAKEHUB_CLOCK_FILE=the file), drives the file from here (jumps, speed changes, bad
content) and reads what the child saw as JSON lines on its stdout.

    python3 -m unittest -v test_shim          (from this folder)
    python3 test_shim.py

Only the standard library is needed.  The children run FAKEHUB_PYTHON (default: this
interpreter); the tests of the Azure IoT SDK's alarm and of paho's keep-alive run only where that
interpreter has azure-iot-device 2.14.0 / paho-mqtt 1.6.1, e.g.
    FAKEHUB_PYTHON=/path/to/venv/bin/python python3 test_shim.py
"""

import json
import os
import queue
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = os.environ.get("FAKEHUB_PYTHON") or sys.executable


class ClockFile(object):
    """The runner's side of the contract: a clock file rewritten atomically."""

    def __init__(self, path, offset=0.0, speed=1.0):
        self.path = path
        self.generation = 0
        now = time.time()
        self.anchor_real = now
        self.anchor_virtual = now + offset
        self.speed = speed
        self.write()

    def virtual_now(self):
        return self.anchor_virtual + (time.time() - self.anchor_real) * self.speed

    def write(self):
        self.generation += 1
        doc = {
            "version": 1,
            "anchor_real_unix": self.anchor_real,
            "anchor_virtual_unix": self.anchor_virtual,
            "speed": self.speed,
            "generation": self.generation,
        }
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, self.path)

    def _reanchor(self):
        now = time.time()
        self.anchor_virtual = self.anchor_virtual + (now - self.anchor_real) * self.speed
        self.anchor_real = now

    def jump(self, seconds):
        self._reanchor()
        self.anchor_virtual += seconds
        self.write()

    def set_speed(self, speed):
        self._reanchor()
        self.speed = speed
        self.write()


# Put at the top of every child program (after the shim has run).
PRELUDE = textwrap.dedent(
    """
    import json, os, sys, threading, time
    import fakehub_clock
    real_time = fakehub_clock.real.time
    real_mono = fakehub_clock.real.monotonic

    def emit(step, **kw):
        kw["step"] = step
        sys.stdout.write(json.dumps(kw) + "\\n")
        sys.stdout.flush()

    def command():
        return sys.stdin.readline().strip()

    def real_duration(fn, *args, **kwargs):
        t0 = real_mono()
        fn(*args, **kwargs)
        return real_mono() - t0
    """
)


class Child(object):
    """A child interpreter running `code`, with its JSON lines collected by a thread."""

    def __init__(self, code, clock_path=None, prelude=True):
        env = dict(os.environ)
        env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("FAKEHUB_CLOCK_FILE", None)
        env.pop("FAKEHUB_CLOCK_DEBUG", None)
        if clock_path is not None:
            env["FAKEHUB_CLOCK_FILE"] = clock_path
        source = (PRELUDE if prelude else "") + textwrap.dedent(code)
        self.proc = subprocess.Popen(
            [PYTHON, "-c", source],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
        )
        self.lines = queue.Queue()
        self.stderr = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self):
        for line in self.proc.stdout:
            line = line.strip()
            if line:
                try:
                    self.lines.put(json.loads(line))
                except ValueError:
                    self.lines.put({"step": "garbage", "line": line})
        self.lines.put(None)

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line)

    def expect(self, step, timeout=20.0):
        """The next line, which must be `step`; returns it with the real time it was read."""
        try:
            msg = self.lines.get(timeout=timeout)
        except queue.Empty:
            msg = "nothing within %.1f s" % timeout
        if msg is None:
            self.proc.wait(5)
            msg = "exit %s" % self.proc.returncode
        if not isinstance(msg, dict) or msg.get("step") != step:
            raise AssertionError(
                "expected %r from the child, got %r\nstderr:\n%s"
                % (step, msg, "".join(self.stderr))
            )
        msg["_read_at"] = time.time()
        return msg

    def send(self, line="go"):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except Exception:
                pass


def child_can_import(module):
    return (
        subprocess.call(
            [PYTHON, "-c", "import " + module],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        == 0
    )


class ShimTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory(prefix="fakehub-shim-")
        self.path = os.path.join(self.dir.name, "clock.json")
        self.children = []

    def tearDown(self):
        for c in self.children:
            c.close()
        self.dir.cleanup()

    def child(self, code, clock=True, prelude=True):
        c = Child(code, self.path if clock else None, prelude)
        self.children.append(c)
        return c

    # -- activation ----------------------------------------------------------------------

    def test_unset_patches_nothing(self):
        c = self.child(
            """
            import sys, time, json, datetime, threading, select, queue, _datetime
            builtin = type(len)
            print(json.dumps({
                "step": "state",
                "shim_loaded": "fakehub_clock" in sys.modules,
                "time_builtin": all(type(getattr(time, n)) is builtin
                                    for n in ("time", "time_ns", "monotonic", "sleep", "localtime")),
                "select_builtin": type(select.select) is builtin,
                "condition_wait": threading.Condition.wait.__module__,
                "datetime_real": datetime.datetime is _datetime.datetime
                                 and datetime.date is _datetime.date,
                "simplequeue_real": queue.SimpleQueue.__module__,
                "time": time.time(),
            }), flush=True)
            """,
            clock=False,
            prelude=False,
        )
        s = c.expect("state")
        self.assertFalse(s["shim_loaded"])
        self.assertTrue(s["time_builtin"])
        self.assertTrue(s["select_builtin"])
        self.assertEqual(s["condition_wait"], "threading")
        self.assertTrue(s["datetime_real"])
        self.assertEqual(s["simplequeue_real"], "_queue")
        self.assertLess(abs(s["time"] - time.time()), 5.0)

    # -- wall time -------------------------------------------------------------------------

    def test_wall_time_follows_the_file(self):
        ClockFile(self.path, offset=86400.0)
        c = self.child(
            """
            import datetime, time
            emit("now", time=time.time(), time_ns=time.time_ns(), real=real_time(),
                 dt=datetime.datetime.now().timestamp(),
                 utc=datetime.datetime.utcnow().replace(tzinfo=datetime.timezone.utc).timestamp(),
                 aware=datetime.datetime.now(datetime.timezone.utc).timestamp(),
                 today=datetime.date.today().toordinal(),
                 dt_today=datetime.datetime.today().timestamp(),
                 localtime=time.mktime(time.localtime()),
                 gmtime=time.gmtime().tm_yday,
                 clock_realtime=time.clock_gettime(time.CLOCK_REALTIME))
            """
        )
        s = c.expect("now")
        expected = s["real"] + 86400.0
        for key in ("time", "dt", "utc", "aware", "dt_today", "clock_realtime"):
            self.assertAlmostEqual(s[key], expected, delta=0.5, msg=key)
        self.assertAlmostEqual(s["time_ns"] / 1e9, expected, delta=0.5)
        self.assertAlmostEqual(s["localtime"], expected, delta=1.5)
        import datetime

        virtual_day = datetime.date.fromtimestamp(expected)
        self.assertEqual(s["today"], virtual_day.toordinal())
        self.assertEqual(s["gmtime"], time.gmtime(expected).tm_yday)

    def test_a_jump_is_seen_and_monotonic_does_not_jump(self):
        clock = ClockFile(self.path)
        c = self.child(
            """
            import time
            emit("ready", mono=time.monotonic(), rmono=real_mono())
            while time.time() - real_time() < 3000:
                time.sleep(0.002)
            emit("seen", real=real_time(), mono=time.monotonic(), rmono=real_mono(),
                 offset=time.time() - real_time())
            """
        )
        ready = c.expect("ready")
        time.sleep(0.2)
        jumped_at = time.time()
        clock.jump(3600.0)
        seen = c.expect("seen")
        self.assertLess(seen["real"] - jumped_at, 0.25, "jump noticed too late")
        self.assertAlmostEqual(seen["offset"], 3600.0, delta=0.5)
        # Monotonic advanced like the real monotonic clock (speed 1), not by 3600.
        self.assertAlmostEqual(
            seen["mono"] - ready["mono"], seen["rmono"] - ready["rmono"], delta=0.1
        )

    def test_bad_or_missing_file_keeps_the_last_good_state(self):
        clock = ClockFile(self.path, offset=1000.0)
        c = self.child(
            """
            import time
            while True:
                cmd = command()
                if cmd == "quit":
                    break
                time.sleep(0.05)   # past the poll interval: the file is looked at again
                emit("offset", offset=time.time() - real_time())
            """
        )

        def offset():
            c.send()
            return c.expect("offset")["offset"]

        self.assertAlmostEqual(offset(), 1000.0, delta=0.5)
        with open(self.path, "w") as f:  # a half-written file (not atomic)
            f.write('{"version":1,"anchor_real_unix":17638')
        self.assertAlmostEqual(offset(), 1000.0, delta=0.5)
        with open(self.path, "w") as f:  # a future format
            json.dump({"version": 2, "anchor_real_unix": 0, "anchor_virtual_unix": 9e9,
                       "speed": 1, "generation": 99}, f)
        self.assertAlmostEqual(offset(), 1000.0, delta=0.5)
        with open(self.path, "w") as f:  # speed 0 is not a clock
            json.dump({"version": 1, "anchor_real_unix": 0, "anchor_virtual_unix": 0,
                       "speed": 0, "generation": 99}, f)
        self.assertAlmostEqual(offset(), 1000.0, delta=0.5)
        os.remove(self.path)
        self.assertAlmostEqual(offset(), 1000.0, delta=0.5)
        clock.jump(4000.0)
        self.assertAlmostEqual(offset(), 5000.0, delta=0.5)
        c.send("quit")

    def test_missing_file_at_start_means_real_time_until_it_appears(self):
        c = self.child(
            """
            import time
            emit("offset", offset=time.time() - real_time())
            command()
            time.sleep(0.05)
            emit("offset", offset=time.time() - real_time())
            """
        )
        self.assertAlmostEqual(c.expect("offset")["offset"], 0.0, delta=0.5)
        ClockFile(self.path, offset=7200.0)
        c.send()
        self.assertAlmostEqual(c.expect("offset")["offset"], 7200.0, delta=0.5)
        self.assertIn("using real time until it appears", "".join(c.stderr))

    # -- relative waits scale with speed ---------------------------------------------------

    def test_sleep_and_timed_waits_scale_with_speed(self):
        ClockFile(self.path, speed=100.0)
        c = self.child(
            """
            import asyncio, queue, select, selectors, socket, time
            d = {}
            d["sleep_10"] = real_duration(time.sleep, 10)
            d["event_wait_5"] = real_duration(threading.Event().wait, 5)
            cond = threading.Condition()
            with cond:
                d["condition_wait_for_5"] = real_duration(cond.wait_for, lambda: False, 5)
            def get(q):
                try:
                    q.get(timeout=5)
                except queue.Empty:
                    pass
            d["queue_get_5"] = real_duration(get, queue.Queue())
            d["simplequeue_get_5"] = real_duration(get, queue.SimpleQueue())
            a, b = socket.socketpair()
            d["select_5"] = real_duration(select.select, [a], [], [], 5)
            sel = selectors.DefaultSelector()
            sel.register(a, selectors.EVENT_READ)
            d["selector_5"] = real_duration(sel.select, 5)
            d["asyncio_sleep_5"] = real_duration(asyncio.run, asyncio.sleep(5))
            fired = threading.Event()
            t0 = real_mono()
            threading.Timer(5, fired.set).start()
            fired.wait()
            d["timer_5"] = real_mono() - t0
            worker = threading.Thread(target=time.sleep, args=(60,), daemon=True)
            worker.start()
            d["join_5"] = real_duration(worker.join, 5)
            m0, r0 = time.monotonic(), real_mono()
            time.sleep(20)
            d["mono_rate"] = (time.monotonic() - m0) / (real_mono() - r0)
            # A wait that is satisfied early still returns at once.
            ev = threading.Event()
            threading.Thread(target=lambda: (time.sleep(1), ev.set())).start()
            d["event_set_after_1"] = real_duration(ev.wait, 1000)
            emit("durations", **d)
            """
        )
        d = c.expect("durations", timeout=30)
        del d["step"], d["_read_at"]
        self.assertTrue(0.09 <= d.pop("sleep_10") < 0.4)
        self.assertAlmostEqual(d.pop("mono_rate"), 100.0, delta=10.0)
        self.assertTrue(0.005 <= d.pop("event_set_after_1") < 0.2)
        for name, real_seconds in sorted(d.items()):
            self.assertTrue(0.045 <= real_seconds < 0.3, "%s took %.3f s" % (name, real_seconds))

    def test_speed_change_during_a_wait_is_honoured(self):
        clock = ClockFile(self.path, speed=1.0)
        c = self.child(
            """
            import time
            done = {}
            def timer_fired():
                done["timer"] = real_mono()
            t = threading.Timer(100, timer_fired)
            t.start()
            emit("sleeping")
            t0 = real_mono()
            time.sleep(100)
            slept = real_mono() - t0
            t.join()
            emit("woke", slept=slept, timer=done["timer"] - t0)
            """
        )
        c.expect("sleeping")
        time.sleep(0.3)
        clock.set_speed(1000.0)  # 100 virtual s: ~0.3 s done at speed 1, the rest in 0.1 s
        woke = c.expect("woke", timeout=10)
        self.assertLess(woke["slept"], 1.0)
        self.assertLess(woke["timer"], 1.0)

    def test_relative_timers_do_not_fire_on_a_jump(self):
        clock = ClockFile(self.path, speed=1.0)
        c = self.child(
            """
            import time
            fired = threading.Event()
            threading.Timer(30, fired.set).start()
            returned = []
            waiter = threading.Thread(target=lambda: returned.append(threading.Event().wait(30)))
            waiter.start()
            m0 = time.monotonic()
            emit("ready")
            command()
            emit("after", timer_fired=fired.is_set(), wait_returned=bool(returned),
                 mono_elapsed=time.monotonic() - m0, offset=time.time() - real_time())
            os._exit(0)
            """
        )
        c.expect("ready")
        clock.jump(3600.0)
        time.sleep(0.5)
        c.send()
        after = c.expect("after")
        self.assertAlmostEqual(after["offset"], 3600.0, delta=1.0)
        self.assertFalse(after["timer_fired"])
        self.assertFalse(after["wait_returned"])
        self.assertLess(after["mono_elapsed"], 5.0)

    def test_monotonic_follows_speed_changes_without_steps(self):
        clock = ClockFile(self.path, speed=1.0)
        c = self.child(
            """
            import time
            samples = []
            emit("ready")
            t_end = real_mono() + 1.2
            last = time.monotonic()
            backwards = 0
            while real_mono() < t_end:
                m = time.monotonic()
                backwards += m < last
                last = m
                samples.append((real_mono(), m))
                time.sleep(0.001)
            emit("samples", samples=samples, backwards=backwards)
            """
        )
        c.expect("ready")
        time.sleep(0.4)
        clock.set_speed(50.0)
        time.sleep(0.4)
        clock.jump(3600.0)
        clock.set_speed(1.0)
        s = c.expect("samples", timeout=10)
        self.assertEqual(s["backwards"], 0)
        # No step anywhere (the jump of 3600 s must not show): between two samples monotonic
        # time moves at most as far as the fastest speed allows, give or take sampling noise.
        excess = [
            (m1 - m0) - 50.0 * (r1 - r0)
            for (r0, m0), (r1, m1) in zip(s["samples"], s["samples"][1:])
        ]
        self.assertLess(max(excess), 0.25)
        total = s["samples"][-1][1] - s["samples"][0][1]
        self.assertTrue(15.0 < total < 25.0, total)  # ~0.4 s × 1 + ~0.4 s × 50 + ~0.4 s × 1

    # -- wall deadlines --------------------------------------------------------------------

    def test_wall_deadline_waits_fire_on_a_jump(self):
        clock = ClockFile(self.path, speed=1.0)
        c = self.child(
            """
            import time
            deadline = time.time() + 3500
            fired = {}
            def poll_loop():       # the usual pattern: poll the wall clock between short waits
                ev = threading.Event()
                while time.time() < deadline:
                    ev.wait(1)
                fired["poll_loop"] = (real_time(), time.time())
            def until():           # the shim's own wall-deadline wait
                fakehub_clock.wait_until(deadline)
                fired["wait_until"] = (real_time(), time.time())
            threads = [threading.Thread(target=f) for f in (poll_loop, until)]
            for t in threads:
                t.start()
            time.sleep(0.3)
            emit("ready", early=sorted(fired))
            for t in threads:
                t.join()
            emit("fired", deadline=deadline, **fired)
            """
        )
        self.assertEqual(c.expect("ready")["early"], [])
        jumped_at = time.time()
        clock.jump(3600.0)
        fired = c.expect("fired", timeout=10)
        real_at, virtual_at = fired["wait_until"]
        self.assertLess(real_at - jumped_at, 0.2)
        self.assertGreaterEqual(virtual_at, fired["deadline"])
        # Event.wait(1) is one virtual second of monotonic time: 1 s real at speed 1.
        real_at, virtual_at = fired["poll_loop"]
        self.assertLess(real_at - jumped_at, 1.5)
        self.assertGreaterEqual(virtual_at, fired["deadline"])

    def test_sdk_alarm_fires_on_a_jump(self):
        if not child_can_import("azure.iot.device.common.alarm"):
            self.skipTest("azure-iot-device is not installed for %s" % PYTHON)
        clock = ClockFile(self.path, speed=1.0)
        c = self.child(
            """
            import time
            from azure.iot.device.common.alarm import Alarm
            fired = []
            alarm_time = time.time() + 3500
            alarm = Alarm(alarm_time, lambda: fired.append((real_time(), time.time())))
            alarm.daemon = True
            alarm.start()
            cancelled = Alarm(time.time() + 3500, lambda: fired.append("cancelled one fired"))
            cancelled.daemon = True
            cancelled.start()
            cancelled.cancel()
            time.sleep(0.3)
            emit("ready", fired=len(fired))
            alarm.join()
            time.sleep(0.1)
            emit("fired", alarm_time=alarm_time, fired=fired)
            """
        )
        self.assertEqual(c.expect("ready")["fired"], 0)
        jumped_at = time.time()
        clock.jump(3600.0)
        fired = c.expect("fired", timeout=10)
        self.assertEqual(len(fired["fired"]), 1, fired)
        real_at, virtual_at = fired["fired"][0]
        self.assertLess(real_at - jumped_at, 0.5)
        self.assertGreaterEqual(virtual_at, fired["alarm_time"])

    # -- paho keep-alive -------------------------------------------------------------------

    def test_paho_keepalive_runs_at_speed_and_ignores_jumps(self):
        if not child_can_import("paho.mqtt.client"):
            self.skipTest("paho-mqtt is not installed for %s" % PYTHON)
        clock = ClockFile(self.path, speed=100.0)
        c = self.child(
            """
            import socket
            import paho.mqtt.client as mqtt

            # A minimal MQTT 3.1.1 server on loopback: CONNACK, then PINGRESP to each PINGREQ.
            server = socket.socket()
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            port = server.getsockname()[1]
            pings = []

            def read_packet(conn):
                head = conn.recv(1)
                if not head:
                    return None
                length, shift = 0, 0
                while True:
                    b = conn.recv(1)[0]
                    length |= (b & 0x7F) << shift
                    shift += 7
                    if not b & 0x80:
                        break
                body = b""
                while len(body) < length:
                    body += conn.recv(length - len(body))
                return head[0] >> 4

            def serve():
                conn, _ = server.accept()
                while True:
                    kind = read_packet(conn)
                    if kind is None:
                        return
                    if kind == 1:
                        conn.sendall(bytes([0x20, 2, 0, 0]))
                    elif kind == 12:
                        pings.append(real_time())
                        emit("ping", at=pings[-1])
                        conn.sendall(bytes([0xD0, 0]))

            threading.Thread(target=serve, daemon=True).start()
            disconnects = []
            client = mqtt.Client(client_id="shim-test")
            client.on_disconnect = lambda c, u, rc: disconnects.append(rc)
            client.connect("127.0.0.1", port, keepalive=60)
            client.loop_start()
            emit("connected")
            command()
            emit("summary", disconnects=disconnects)
            os._exit(0)
            """
        )
        c.expect("connected")
        started = time.time()
        pings = []
        jumped_at = None
        while time.time() - started < 3.0:
            try:
                msg = c.expect("ping", timeout=3.5 - (time.time() - started))
            except AssertionError:
                break
            pings.append(msg["at"])
            if len(pings) == 2 and jumped_at is None:
                time.sleep(0.1)
                jumped_at = time.time()
                clock.jump(3600.0)
        c.send()
        summary = c.expect("summary")
        self.assertEqual(summary["disconnects"], [])
        # keep-alive 60 s at speed 100: a PINGREQ every 0.6 s real, also across the jump.
        self.assertGreaterEqual(len(pings), 3, pings)
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        for gap in gaps:
            self.assertTrue(0.5 < gap < 0.8, gaps)
        self.assertIsNotNone(jumped_at)

    # -- compatibility ---------------------------------------------------------------------

    def test_datetime_stays_compatible(self):
        ClockFile(self.path, offset=3600.0)
        c = self.child(
            """
            import datetime, pickle, _datetime
            now = datetime.datetime.now()
            checks = {
                "real_is_instance": isinstance(_datetime.datetime(2020, 1, 1), datetime.datetime),
                "real_date_is_date": isinstance(_datetime.date(2020, 1, 1), datetime.date),
                "date_is_not_datetime": not isinstance(_datetime.date(2020, 1, 1),
                                                       datetime.datetime),
                "now_is_date": isinstance(now, datetime.date),
                "subclass": issubclass(_datetime.datetime, datetime.date),
                "pickle": pickle.loads(pickle.dumps(now)) == now,
                "repr": repr(datetime.datetime(2020, 1, 2)) == "datetime.datetime(2020, 1, 2, 0, 0)",
                "arithmetic": (now + datetime.timedelta(hours=1)) - now
                              == datetime.timedelta(hours=1),
                "compare_real": now > _datetime.datetime(2020, 1, 1),
                "fromisoformat": datetime.datetime.fromisoformat("2020-01-02T03:04:05")
                                 == _datetime.datetime(2020, 1, 2, 3, 4, 5),
            }
            emit("checks", **checks)
            """
        )
        checks = c.expect("checks")
        checks.pop("step")
        checks.pop("_read_at")
        self.assertEqual([k for k, ok in checks.items() if not ok], [])

    def test_replacements_behave_like_builtins(self):
        ClockFile(self.path, offset=3600.0)
        c = self.child(
            """
            import io, logging, select, time
            # logging keeps time.localtime as a class attribute and calls self.converter(t);
            # a replacement that bound like a method would break every log line.
            out = io.StringIO()
            handler = logging.StreamHandler(out)
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            log = logging.getLogger("shim-test")
            log.addHandler(handler)
            log.error("hello")
            class Holder(object):
                clock = time.monotonic
                wall = time.time
                pick = select.select
            h = Holder()
            emit("checks", log=out.getvalue(), mono=h.clock(), wall=h.wall() - real_time(),
                 select=h.pick([], [], [], 0) == ([], [], []), name=time.time.__name__)
            """
        )
        checks = c.expect("checks")
        self.assertIn("hello", checks["log"])
        self.assertNotIn("Logging error", "".join(c.stderr))
        self.assertAlmostEqual(checks["wall"], 3600.0, delta=1.0)
        self.assertTrue(checks["select"])
        self.assertEqual(checks["name"], "time")

    def test_waits_do_not_spin(self):
        ClockFile(self.path, speed=1.0)
        c = self.child(
            """
            import time, select
            def cpu():
                return os.times()[0] + os.times()[1]
            c0, r0 = cpu(), real_mono()
            ts = [threading.Thread(target=threading.Event().wait, args=(1.0,)) for _ in range(4)]
            for t in ts:
                t.start()
            select.select([], [], [], 1.0)
            time.sleep(0.2)
            for t in ts:
                t.join()
            emit("cpu", cpu=cpu() - c0, real=real_mono() - r0)
            """
        )
        s = c.expect("cpu")
        self.assertGreater(s["real"], 0.9)
        self.assertLess(s["cpu"], 0.25, "waits should sleep, not spin")

    def test_fork_child_keeps_working(self):
        if not hasattr(os, "fork"):
            self.skipTest("no fork")
        ClockFile(self.path, offset=600.0, speed=10.0)
        c = self.child(
            """
            import time
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                time.sleep(1)      # 0.1 s real
                os.write(w, json.dumps(time.time() - real_time()).encode())
                os._exit(0)
            os.waitpid(pid, 0)
            emit("forked", offset=json.loads(os.read(r, 100)))
            """
        )
        self.assertGreater(c.expect("forked")["offset"], 599.0)


if __name__ == "__main__":
    unittest.main()
