"""fakehub_clock: make an unmodified Python process follow fakehub's virtual clock.

The hub's runner keeps a JSON *clock file* (path in ``FAKEHUB_CLOCK_FILE``) up to date,
rewriting it atomically on every jump or speed change::

    {"version":1,"anchor_real_unix":R,"anchor_virtual_unix":V,"speed":S,"generation":G}

Virtual wall time at real wall time ``r`` is ``V + (r - R) * S``.  Virtual *monotonic* time
advances at ``S`` per real second and ignores jumps (a jump models time that passed while the
device was healthy; relative timers such as keep-alives must not fire because of it).

``install(path)`` (called by ``sitecustomize.py`` at interpreter start) patches:

* ``time.time``/``time_ns``, ``localtime``/``gmtime``/``ctime``/``asctime``/``strftime`` without
  an explicit time, ``clock_gettime`` for CLOCK_REALTIME: virtual wall time;
* ``time.monotonic``/``monotonic_ns``, ``perf_counter``/``perf_counter_ns``, ``clock_gettime`` for
  the monotonic clocks: virtual monotonic time;
* ``time.sleep`` and the blocking waits that take a relative timeout -- ``threading.Condition.wait``
  (hence ``Event.wait``, ``Timer``, ``Semaphore``, ``Barrier``, ``queue.Queue``,
  ``concurrent.futures``), ``threading.Thread.join``, ``queue.SimpleQueue.get``,
  ``select.select`` and the ``selectors`` classes (hence asyncio's event loop): the timeout is in
  virtual seconds, measured on virtual monotonic time;
* ``datetime.datetime.now/utcnow/today`` and ``datetime.date.today``: virtual wall time;
* the Azure IoT SDK's ``azure.iot.device.common.alarm.Alarm`` (the SAS renewal alarm): it waits
  for an absolute virtual wall deadline and notices a jump past it within a few tens of ms.

Every patched wait is cut into slices of at most ``SLICE`` real seconds; after each slice it
re-reads the clock (the file is polled at most every ``POLL_INTERVAL`` real seconds), so a speed
change or a jump is honoured promptly and nothing ever spins.  A missing, unreadable or
half-written file keeps the last good reading.

The stdlib modules are patched when they are first imported (or at once if they already are),
so a process that never imports ``selectors`` never loads it because of this shim.
"""

import functools
import json
import operator as _operator
import os
import sys
import time as _time_mod
import _thread

__all__ = [
    "install",
    "installed",
    "time",
    "monotonic",
    "sleep",
    "wait_until",
    "speed",
    "status",
    "real",
    "POLL_INTERVAL",
    "SLICE",
]

# How often (real seconds) the clock file is looked at, at most.  Reading it costs a few
# microseconds; the poll only happens when some thread asks for the time.
POLL_INTERVAL = 0.010
# Longest real time any patched wait blocks before it re-reads the clock.
SLICE = 0.020


class _Real:
    """The process's real clocks and waits, as they were before ``install()``."""

    time = _time_mod.time
    time_ns = _time_mod.time_ns
    monotonic = _time_mod.monotonic
    monotonic_ns = _time_mod.monotonic_ns
    perf_counter = _time_mod.perf_counter
    perf_counter_ns = _time_mod.perf_counter_ns
    sleep = _time_mod.sleep
    localtime = _time_mod.localtime
    gmtime = _time_mod.gmtime
    ctime = _time_mod.ctime
    asctime = _time_mod.asctime
    strftime = _time_mod.strftime
    clock_gettime = getattr(_time_mod, "clock_gettime", None)
    clock_gettime_ns = getattr(_time_mod, "clock_gettime_ns", None)


real = _Real

_real_time = _Real.time
_real_monotonic = _Real.monotonic
_real_sleep = _Real.sleep


def _debug_enabled():
    return os.environ.get("FAKEHUB_CLOCK_DEBUG", "") not in ("", "0")


def _log(msg):
    try:
        sys.stderr.write("fakehub_clock: %s\n" % msg)
        sys.stderr.flush()
    except Exception:
        pass


# --------------------------------------------------------------------------------------------
# The clock
# --------------------------------------------------------------------------------------------


class _Snapshot(object):
    """One immutable reading of the clock file, plus where virtual monotonic time stood when it
    was adopted.  Published by a single attribute assignment, so readers need no lock."""

    __slots__ = (
        "anchor_real",
        "anchor_virtual",
        "speed",
        "generation",
        "mono_real",
        "mono_virtual",
    )

    def __init__(self, anchor_real, anchor_virtual, speed, generation, mono_real, mono_virtual):
        self.anchor_real = anchor_real
        self.anchor_virtual = anchor_virtual
        self.speed = speed
        self.generation = generation
        self.mono_real = mono_real
        self.mono_virtual = mono_virtual

    def wall(self, real_wall):
        return self.anchor_virtual + (real_wall - self.anchor_real) * self.speed

    def mono(self, real_mono):
        return self.mono_virtual + (real_mono - self.mono_real) * self.speed


def _parse(raw):
    """The clock file's fields, or None if ``raw`` is not a complete, valid version-1 file."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("version") != 1:
            return None
        anchor_real = float(doc["anchor_real_unix"])
        anchor_virtual = float(doc["anchor_virtual_unix"])
        speed = float(doc["speed"])
        generation = doc.get("generation")
    except (ValueError, TypeError, KeyError):
        return None
    finite = (anchor_real, anchor_virtual, speed)
    if any(v != v or v in (float("inf"), float("-inf")) for v in finite) or not speed > 0:
        return None
    return anchor_real, anchor_virtual, speed, generation


class FileClock(object):
    """Virtual wall and monotonic time read from a clock file.  Thread-safe; never blocks."""

    def __init__(self, path):
        self.path = path
        now_mono = _real_monotonic()
        now_wall = _real_time()
        # Until the file has been read: real time at speed 1.  Virtual monotonic time starts at
        # the real monotonic reading so that values taken before install() stay comparable.
        self._snap = _Snapshot(now_wall, now_wall, 1.0, None, now_mono, now_mono)
        self._raw = None  # bytes of the last good file
        self._bad_raw = None  # bytes of the last bad file (reported once)
        self._ever_read = False
        self._next_poll = 0.0
        self._reinit_locks()
        self._debug = _debug_enabled()

    def _reinit_locks(self):
        # _poll_lock: one thread re-reads the file at a time; others use the current snapshot.
        # _mono_lock: keeps monotonic readings non-decreasing across threads around a speed
        # change.  Reentrant so that a signal handler that reads the clock cannot deadlock.
        self._poll_lock = _thread.allocate_lock()
        self._mono_lock = _thread.RLock()
        self._mono_high = float("-inf")

    # -- reading the file ------------------------------------------------------------------

    def snapshot(self):
        """The current snapshot, re-reading the file if the last look is older than
        POLL_INTERVAL."""
        now = _real_monotonic()
        if now >= self._next_poll and self._poll_lock.acquire(False):
            try:
                if now >= self._next_poll:
                    self._poll(now)
                    self._next_poll = now + POLL_INTERVAL
            finally:
                self._poll_lock.release()
        return self._snap

    def _poll(self, now_mono):
        try:
            with open(self.path, "rb") as f:
                raw = f.read(65536)
        except OSError as e:
            if not self._ever_read and self._bad_raw != "missing":
                self._bad_raw = "missing"
                _log("cannot read %s (%s); using real time until it appears" % (self.path, e))
            return
        if raw == self._raw:
            return
        fields = _parse(raw)
        if fields is None:
            # Half-written or foreign content: keep the last good state, say so once.
            if raw != self._bad_raw:
                self._bad_raw = raw
                if self._debug or not self._ever_read:
                    _log("ignoring unusable clock file content %r" % raw[:200])
            return
        self._raw = raw
        self._ever_read = True
        anchor_real, anchor_virtual, speed, generation = fields
        old = self._snap
        # Monotonic time continues from where it is now, at the new speed: no jump.
        new = _Snapshot(
            anchor_real, anchor_virtual, speed, generation, now_mono, old.mono(now_mono)
        )
        self._snap = new
        if self._debug:
            _log(
                "generation %s: speed %g, virtual-real offset %+.3f s"
                % (generation, speed, new.wall(_real_time()) - _real_time())
            )

    # -- the clocks ------------------------------------------------------------------------

    def time(self):
        """Virtual wall time, seconds since the epoch (like time.time())."""
        return self.snapshot().wall(_real_time())

    def monotonic(self):
        """Virtual monotonic time: runs at the file's speed, ignores jumps, never decreases."""
        v = self.snapshot().mono(_real_monotonic())
        with self._mono_lock:
            if v < self._mono_high:
                v = self._mono_high
            else:
                self._mono_high = v
        return v

    def speed(self):
        return self.snapshot().speed


_clock = None  # the FileClock once install() has run


# --------------------------------------------------------------------------------------------
# Waiting in slices
# --------------------------------------------------------------------------------------------


def _sliced(timeout, step, done):
    """Block for ``timeout`` virtual seconds of monotonic time by calling ``step(real_seconds)``
    with at most SLICE real seconds each time, until ``done(result)`` or the time is up.
    Returns the last result.  Re-reads the clock between slices, so a speed change mid-wait
    re-plans the rest of it; a jump does not shorten it."""
    clock = _clock
    timeout = float(timeout)
    deadline = clock.monotonic() + timeout
    result = step(min(timeout / clock.speed(), SLICE))
    while not done(result):
        remaining = deadline - clock.monotonic()
        if remaining <= 0:
            break
        result = step(min(remaining / clock.speed(), SLICE))
    return result


def _real_event_wait(event, real_seconds):
    """Event.wait() on real time, bypassing the patched Condition.wait."""
    cond = getattr(event, "_cond", None)
    if cond is None or _orig["Condition.wait"] is None:
        if event.is_set():
            return True
        _real_sleep(real_seconds)
        return event.is_set()
    with cond:
        if event.is_set():
            return True
        return _orig["Condition.wait"](cond, real_seconds)


def wait_until(deadline, event=None):
    """Block until virtual *wall* time reaches ``deadline`` (a time.time() value) or, if given,
    until ``event`` (a threading.Event) is set.  Unlike a relative wait, a jump of the clock
    past the deadline ends the wait (within about POLL_INTERVAL + SLICE real seconds).
    Returns True if the event was set, False if the deadline was reached."""
    clock = _clock
    while True:
        if event is not None and event.is_set():
            return True
        if clock is None:
            remaining, speed = deadline - _real_time(), 1.0
        else:
            snap = clock.snapshot()
            remaining, speed = deadline - snap.wall(_real_time()), snap.speed
        if remaining <= 0:
            return False
        real_seconds = min(remaining / speed, SLICE)
        if event is None:
            _real_sleep(real_seconds)
        elif _real_event_wait(event, real_seconds):
            return True


# --------------------------------------------------------------------------------------------
# Replacements for the time module
# --------------------------------------------------------------------------------------------


# These are also the public API (fakehub_clock.time() etc.); before install() they read the
# real clocks.


def time():
    """Virtual wall time (fakehub_clock)."""
    clock = _clock
    return clock.time() if clock is not None else _real_time()


def time_ns():
    """Virtual wall time in nanoseconds (fakehub_clock)."""
    return int(time() * 1e9)


def monotonic():
    """Virtual monotonic time (fakehub_clock)."""
    clock = _clock
    return clock.monotonic() if clock is not None else _real_monotonic()


def monotonic_ns():
    """Virtual monotonic time in nanoseconds (fakehub_clock)."""
    return int(monotonic() * 1e9)


def speed():
    """The clock file's current speed (1.0 before install())."""
    return _clock.speed() if _clock is not None else 1.0


def sleep(secs):
    """Sleep for ``secs`` virtual seconds (fakehub_clock): secs/speed real seconds, re-planned
    when the speed changes; a jump does not shorten it."""
    if not isinstance(secs, float):
        try:
            secs = _operator.index(secs)  # what the real sleep accepts besides floats
        except TypeError:
            return _real_sleep(secs)  # raises the usual TypeError
    if not secs > 0 or _clock is None:
        return _real_sleep(secs)  # 0 yields; negative or NaN raises ValueError
    _sliced(secs, _real_sleep, lambda _: False)


def _localtime(secs=None):
    return _Real.localtime(time() if secs is None else secs)


def _gmtime(secs=None):
    return _Real.gmtime(time() if secs is None else secs)


def _ctime(secs=None):
    return _Real.ctime(time() if secs is None else secs)


def _asctime(t=None):
    return _Real.asctime(_localtime() if t is None else t)


def _strftime(format, t=None):
    return _Real.strftime(format, _localtime() if t is None else t)


_WALL_CLOCK_IDS = set()
_MONO_CLOCK_IDS = set()
for _name in ("CLOCK_REALTIME",):
    if hasattr(_time_mod, _name):
        _WALL_CLOCK_IDS.add(getattr(_time_mod, _name))
for _name in ("CLOCK_MONOTONIC", "CLOCK_MONOTONIC_RAW", "CLOCK_BOOTTIME", "CLOCK_UPTIME"):
    if hasattr(_time_mod, _name):
        _MONO_CLOCK_IDS.add(getattr(_time_mod, _name))


def _clock_gettime(clk_id):
    if clk_id in _WALL_CLOCK_IDS:
        return time()
    if clk_id in _MONO_CLOCK_IDS:
        return monotonic()
    return _Real.clock_gettime(clk_id)


def _clock_gettime_ns(clk_id):
    if clk_id in _WALL_CLOCK_IDS:
        return time_ns()
    if clk_id in _MONO_CLOCK_IDS:
        return monotonic_ns()
    return _Real.clock_gettime_ns(clk_id)


class _Replacement(functools.partial):
    def __repr__(self):
        return "<fakehub_clock replacement for %s>" % self.__name__


def _builtin_like(fn, name):
    """A callable that, like the builtin it replaces, does not turn into a bound method when it
    is stored as a class attribute (the stdlib does that: `logging.Formatter.converter =
    time.localtime`, then calls `self.converter(t)`).  functools.partial objects are not
    descriptors, so they never bind."""
    wrapper = _Replacement(fn)
    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__doc__ = fn.__doc__
    wrapper.__module__ = __name__
    wrapper.__wrapped__ = fn
    return wrapper


for _f, _n in (
    (_localtime, "localtime"),
    (_gmtime, "gmtime"),
    (_ctime, "ctime"),
    (_asctime, "asctime"),
    (_strftime, "strftime"),
    (_clock_gettime, "clock_gettime"),
    (_clock_gettime_ns, "clock_gettime_ns"),
):
    _f.__doc__ = "time.%s on the virtual clock (fakehub_clock)." % _n

# name in the time module -> (original, replacement)
_TIME_PATCHES = {
    "time": (_Real.time, time),
    "time_ns": (_Real.time_ns, time_ns),
    "monotonic": (_Real.monotonic, monotonic),
    "monotonic_ns": (_Real.monotonic_ns, monotonic_ns),
    "perf_counter": (_Real.perf_counter, monotonic),
    "perf_counter_ns": (_Real.perf_counter_ns, monotonic_ns),
    "sleep": (_Real.sleep, sleep),
    "localtime": (_Real.localtime, _localtime),
    "gmtime": (_Real.gmtime, _gmtime),
    "ctime": (_Real.ctime, _ctime),
    "asctime": (_Real.asctime, _asctime),
    "strftime": (_Real.strftime, _strftime),
}
if _Real.clock_gettime is not None:
    _TIME_PATCHES["clock_gettime"] = (_Real.clock_gettime, _clock_gettime)
if _Real.clock_gettime_ns is not None:
    _TIME_PATCHES["clock_gettime_ns"] = (_Real.clock_gettime_ns, _clock_gettime_ns)
_TIME_PATCHES = {
    name: (original, _builtin_like(replacement, name))
    for name, (original, replacement) in _TIME_PATCHES.items()
}


# --------------------------------------------------------------------------------------------
# Patches applied when a module is imported
# --------------------------------------------------------------------------------------------

# Originals of the methods replaced below (None until patched).
_orig = {"Condition.wait": None, "Thread.join": None}


def _patch_threading(threading):
    if getattr(threading.Condition.wait, "_fakehub_patched", False):
        return
    orig_wait = threading.Condition.wait
    orig_join = threading.Thread.join
    _orig["Condition.wait"] = orig_wait
    _orig["Thread.join"] = orig_join

    def wait(self, timeout=None):
        # Event.wait, Timer, Semaphore, Barrier, queue.Queue and concurrent.futures all block
        # here.  The lock stays held between slices (the original wait re-acquires it before
        # returning), so a notify() can never fall between two slices.
        if timeout is None or not timeout > 0:
            return orig_wait(self, timeout)
        return _sliced(timeout, lambda t: orig_wait(self, t), bool)

    def join(self, timeout=None):
        if timeout is None or not timeout > 0:
            return orig_join(self, timeout)
        _sliced(timeout, lambda t: orig_join(self, t), lambda _: not self.is_alive())

    wait.__doc__ = orig_wait.__doc__
    join.__doc__ = orig_join.__doc__
    wait.__qualname__ = "Condition.wait"
    join.__qualname__ = "Thread.join"
    wait._fakehub_patched = join._fakehub_patched = True
    threading.Condition.wait = wait
    threading.Thread.join = join


def _patch_queue(queue):
    # queue.Queue is built on threading.Condition (patched above) and reads time through
    # `from time import monotonic`, which is the patched function when queue is imported
    # after install() (and is rebound by _rebind_existing otherwise).  SimpleQueue is C code.
    base = queue.SimpleQueue
    if getattr(base, "_fakehub_patched", False):
        return
    empty = queue.Empty

    class SimpleQueue(base):
        __doc__ = base.__doc__
        _fakehub_patched = True

        def get(self, block=True, timeout=None):
            if not block or timeout is None or not timeout > 0:
                return base.get(self, block, timeout)
            missing = object()

            def step(t):
                try:
                    return base.get(self, True, t)
                except empty:
                    return missing

            item = _sliced(timeout, step, lambda r: r is not missing)
            if item is missing:
                raise empty
            return item

    SimpleQueue.__module__ = "queue"
    queue.SimpleQueue = SimpleQueue


def _patch_select(select):
    if isinstance(select.select, _Replacement):
        return
    orig_select = select.select

    def patched_select(rlist, wlist, xlist, timeout=None):
        if timeout is None or not timeout > 0:
            return orig_select(rlist, wlist, xlist, timeout)
        rlist, wlist, xlist = list(rlist), list(wlist), list(xlist)
        return _sliced(
            timeout,
            lambda t: orig_select(rlist, wlist, xlist, t),
            lambda r: r[0] or r[1] or r[2],
        )

    patched_select.__doc__ = orig_select.__doc__
    select.select = _builtin_like(patched_select, "select")


def _patch_selectors(selectors):
    # asyncio's loop computes its select() timeout from time.monotonic() (virtual seconds);
    # the selector must therefore wait virtual seconds too.
    for cls in vars(selectors).values():
        if (
            isinstance(cls, type)
            and issubclass(cls, selectors.BaseSelector)
            and cls is not selectors.BaseSelector
            and "select" in vars(cls)
            and not getattr(vars(cls)["select"], "_fakehub_patched", False)
        ):
            cls.select = _sliced_selector_select(vars(cls)["select"])


def _sliced_selector_select(orig):
    def select(self, timeout=None):
        if timeout is None or not timeout > 0:
            return orig(self, timeout)
        return _sliced(timeout, lambda t: orig(self, t), bool)

    select.__doc__ = orig.__doc__
    select.__qualname__ = orig.__qualname__
    select._fakehub_patched = True
    return select


def _patch_datetime(datetime):
    real_date = datetime.date
    real_datetime = datetime.datetime
    if getattr(real_date, "_fakehub_real", None) is not None:
        return  # already patched

    class _Meta(type):
        # isinstance(x, datetime.datetime) must stay true for datetimes made by C code (which
        # are instances of the real class), and for plain dates/datetimes alike.
        def __instancecheck__(cls, obj):
            real_cls = cls.__dict__.get("_fakehub_real")
            if real_cls is not None:
                return isinstance(obj, real_cls)
            return type.__instancecheck__(cls, obj)

        def __subclasscheck__(cls, sub):
            real_cls = cls.__dict__.get("_fakehub_real")
            if real_cls is not None:
                return issubclass(sub, real_cls)
            return type.__subclasscheck__(cls, sub)

    class date(real_date, metaclass=_Meta):
        _fakehub_real = real_date

        @classmethod
        def today(cls):
            return cls.fromtimestamp(time())

    class datetime_(real_datetime, date, metaclass=_Meta):
        _fakehub_real = real_datetime

        @classmethod
        def now(cls, tz=None):
            return cls.fromtimestamp(time(), tz)

        @classmethod
        def utcnow(cls):
            return cls.utcfromtimestamp(time())

        @classmethod
        def today(cls):
            return cls.fromtimestamp(time())

    # Same names as the real classes, so pickle finds them as datetime.date/datetime.datetime,
    # and the same repr ("datetime.datetime(...)"; the C repr would print just "datetime(...)").
    for cls, real_cls in ((date, real_date), (datetime_, real_datetime)):
        cls.__name__ = real_cls.__name__
        cls.__qualname__ = real_cls.__qualname__
        cls.__module__ = "datetime"
        cls.__doc__ = real_cls.__doc__
        cls.__repr__ = _module_qualified_repr(cls, real_cls)
    _REPLACED[id(real_date)] = (real_date, date)
    _REPLACED[id(real_datetime)] = (real_datetime, datetime_)
    datetime.date = date
    datetime.datetime = datetime_


def _module_qualified_repr(fake_cls, real_cls):
    def __repr__(self):
        text = real_cls.__repr__(self)
        if type(self) is fake_cls and text.startswith(real_cls.__name__ + "("):
            text = "datetime." + text
        return text

    return __repr__


def _patch_sdk_alarm(alarm):
    """azure-iot-device's Alarm (common/alarm.py) polls `time.time() < alarm_time` once per
    second with Event.wait(1).  With virtual time that would notice a jump past the deadline
    only after a full virtual second of monotonic time (1 s real at speed 1).  Make it wait for
    the wall deadline directly, re-checked every slice, with the same semantics otherwise."""
    cls = getattr(alarm, "Alarm", None)
    if cls is None or getattr(cls.run, "_fakehub_patched", False):
        return

    def run(self):
        while not self.finished.is_set() and time() < self.alarm_time:
            wait_until(self.alarm_time, self.finished)
        if not self.finished.is_set():
            self.function(*self.args, **self.kwargs)
        self.finished.set()

    run.__doc__ = cls.run.__doc__
    run._fakehub_patched = True
    cls.run = run


_MODULE_PATCHES = {
    "threading": _patch_threading,
    "queue": _patch_queue,
    "select": _patch_select,
    "selectors": _patch_selectors,
    "datetime": _patch_datetime,
    "azure.iot.device.common.alarm": _patch_sdk_alarm,
}

# id(original) -> (original, replacement), for rebinding references held by modules that were
# imported before install()
_REPLACED = {}


class _PatchingLoader(object):
    """Wraps a module's loader to patch the module right after it has executed."""

    def __init__(self, loader, patch):
        self._loader = loader
        self._patch = patch

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module):
        self._loader.exec_module(module)
        # Give the module its real loader back (importlib.resources, reload, ...).
        try:
            module.__loader__ = self._loader
            if module.__spec__ is not None:
                module.__spec__.loader = self._loader
        except Exception:
            pass
        _apply_patch(self._patch, module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _PatchFinder(object):
    """A sys.meta_path entry that does nothing except for the few module names above."""

    def find_spec(self, fullname, path=None, target=None):
        patch = _MODULE_PATCHES.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PatchingLoader(spec.loader, patch)
        return spec

    def invalidate_caches(self):
        pass


def _apply_patch(patch, module):
    try:
        patch(module)
    except Exception as e:  # never break the application's import
        _log("could not patch %s: %r" % (getattr(module, "__name__", module), e))


def _rebind_existing():
    """Modules imported before install() may hold the original functions under their own names
    (`from time import monotonic as _time` in threading, `from time import monotonic as time`
    in queue, ...).  Point those names at the replacements."""
    me = sys.modules.get(__name__)
    for mod in list(sys.modules.values()):
        if mod is None or mod is me or mod is _time_mod:
            continue
        try:
            items = list(vars(mod).items())
        except TypeError:
            continue
        for name, value in items:
            entry = _REPLACED.get(id(value))
            if entry is not None and entry[0] is value:
                try:
                    setattr(mod, name, entry[1])
                except Exception:
                    pass


# --------------------------------------------------------------------------------------------
# Installation
# --------------------------------------------------------------------------------------------


def installed():
    return _clock is not None


def install(path=None):
    """Patch this process to follow the clock file at ``path`` (default: $FAKEHUB_CLOCK_FILE).
    Idempotent; returns the FileClock."""
    global _clock
    if _clock is not None:
        return _clock
    if path is None:
        path = os.environ.get("FAKEHUB_CLOCK_FILE")
    if not path:
        raise ValueError("no clock file: pass a path or set FAKEHUB_CLOCK_FILE")
    clock = FileClock(os.path.abspath(path))
    clock.snapshot()  # first read (reports a missing file)
    _clock = clock
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=clock._reinit_locks)

    for name, (original, replacement) in _TIME_PATCHES.items():
        setattr(_time_mod, name, replacement)
        _REPLACED[id(original)] = (original, replacement)

    for name, patch in _MODULE_PATCHES.items():
        module = sys.modules.get(name)
        if module is not None:
            _apply_patch(patch, module)
    sys.meta_path.insert(0, _PatchFinder())
    _rebind_existing()
    return clock


def status():
    """What the clock looks like right now (for logs and debugging)."""
    if _clock is None:
        return {"installed": False}
    snap = _clock.snapshot()
    r = _real_time()
    return {
        "installed": True,
        "path": _clock.path,
        "generation": snap.generation,
        "speed": snap.speed,
        "virtual_unix": snap.wall(r),
        "offset_s": snap.wall(r) - r,
    }


if __name__ == "__main__":
    # `FAKEHUB_CLOCK_FILE=... python3 -m fakehub_clock`: show what a process would see.
    import fakehub_clock as _installed_copy

    _installed_copy.install()
    _report = _installed_copy.status()
    _report["virtual_iso"] = _installed_copy.real.strftime(
        "%Y-%m-%dT%H:%M:%SZ", _installed_copy.real.gmtime(_report["virtual_unix"])
    )
    print(json.dumps(_report, indent=2))
