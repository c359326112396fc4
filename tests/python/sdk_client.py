#!/usr/bin/env python3
"""Drive the official Azure IoT Python device SDK (azure-iot-device 2.14.0)
against fakehub, for the Rust end-to-end tests.

Usage:  python3 sdk_client.py SCENARIO [options]      (see --help)

Every notable step is printed to stdout as one JSON object per line, flushed
immediately, e.g.

    {"step": "connected"}
    {"step": "sent", "message_id": "m-0", "seq": 0}
    {"step": "done", "exit_code": 0}

The last line is always {"step": "done", ...} (or a watchdog error line) and
the exit code says whether the scenario had its expected outcome:

    0  expected outcome
    1  unexpected outcome (an SDK call raised, a check failed)
    2  bad usage / environment (missing variable, SDK not installed)
    3  a wait for the hub timed out (no C2D message, no method call, ...)
    4  the global --deadline watchdog fired (the process is killed hard)

Keys and SAS tokens are never printed: only ids and host names are, and every
exception text goes through redact() first.

Configuration comes from the environment (see README.md):
    FAKEHUB_CONNECTION_STRING   device or module connection string (SAS auth)
    FAKEHUB_CA_FILE             PEM CA certificate that the client trusts
    FAKEHUB_CERT_FILE, FAKEHUB_KEY_FILE, FAKEHUB_HOST_NAME, FAKEHUB_DEVICE_ID,
    FAKEHUB_GATEWAY_HOST [, FAKEHUB_MODULE_ID]        X.509 auth instead of SAS

Nothing in here talks to anything but the host named by GatewayHostName /
FAKEHUB_GATEWAY_HOST (the SDK always uses port 8883).
"""

import argparse
import base64
import json
import logging
import os
import re
import sys
import threading
import time

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_WATCHDOG = 4

EXPECTED_SDK_VERSION = "2.14.0"

# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------

_print_lock = threading.Lock()
_secrets = []  # literal strings that must never reach stdout/stderr


def redact(text):
    """Remove anything that looks like a key or a SAS token from text."""
    text = str(text)
    for secret in _secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    text = re.sub(r"SharedAccessSignature\s+\S+", "SharedAccessSignature <redacted>", text)
    text = re.sub(r"(SharedAccessKey=)[^;\s]+", r"\1<redacted>", text)
    text = re.sub(r"(sig=)[^&\s]+", r"\1<redacted>", text)
    return text


def emit(step, **fields):
    """Print one JSON line to stdout and flush it (thread safe)."""
    record = {"step": step}
    record.update(fields)
    line = json.dumps(record, default=str)
    with _print_lock:
        sys.stdout.write(redact(line) + "\n")
        sys.stdout.flush()


def describe_exception(exc):
    """Type, message and cause chain of an exception, as JSON fields.

    The sync SDK wraps internal errors ("raise CredentialError(...) from e"),
    so the chain tells which internal error (e.g. UnauthorizedError for a
    CONNACK refusal) was behind the public one.
    """
    causes = []
    cause = exc.__cause__ or exc.__context__
    while cause is not None and len(causes) < 5:
        causes.append({"type": type(cause).__name__, "message": redact(cause)})
        cause = cause.__cause__ or cause.__context__
    return {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "message": redact(exc),
        "causes": causes,
    }


def finish(code, **fields):
    """Print the final line and leave at once.

    os._exit is used on purpose: the SDK keeps non-daemon worker threads
    (thread pools) that can keep a normal interpreter exit waiting after a
    failure; a test driver must never hang.
    """
    emit("done", exit_code=code, **fields)
    try:
        sys.stderr.flush()
    finally:
        os._exit(code)


def fail(code, step="error", **fields):
    emit(step, **fields)
    finish(code)


class CallTimeout(Exception):
    """Raised by call_with_timeout when the SDK call did not return in time."""


def call_with_timeout(timeout, func, *args, **kwargs):
    """Run a blocking SDK call in a daemon thread and wait at most `timeout` s.

    Most sync SDK calls block on an internal event with no timeout at all
    (EventedCallback.wait_for_completion()), so this is the only way to bound
    them. On timeout the call keeps running in the background; the process
    ends with os._exit anyway.
    """
    result = {}

    def runner():
        try:
            result["value"] = func(*args, **kwargs)
        except BaseException as exc:  # noqa: B902 - reported to the caller
            result["error"] = exc

    worker = threading.Thread(target=runner, name="sdk-call", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise CallTimeout("{} did not return within {} s".format(
            getattr(func, "__name__", "call"), timeout))
    if "error" in result:
        raise result["error"]
    return result.get("value")


def start_watchdog(seconds):
    """Kill the process hard if the whole scenario takes longer than `seconds`."""

    def expire():
        emit("error", type="Watchdog",
             message="global deadline of {} s expired".format(seconds))
        emit("done", exit_code=EXIT_WATCHDOG)
        os._exit(EXIT_WATCHDOG)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


# --------------------------------------------------------------------------
# Configuration and client creation
# --------------------------------------------------------------------------

def parse_connection_string(text):
    """Split a connection string into a dict (only used for display/redaction)."""
    fields = {}
    for part in text.split(";"):
        if "=" in part:
            key, value = part.split("=", 1)
            fields[key.strip()] = value
    return fields


def read_ca():
    path = os.environ.get("FAKEHUB_CA_FILE")
    if not path:
        return None
    try:
        with open(path, "r", encoding="ascii") as handle:
            return handle.read()
    except OSError as exc:
        fail(EXIT_USAGE, type="ConfigError",
             message="cannot read FAKEHUB_CA_FILE: {}".format(exc))


def client_options(args, connection_retry=True):
    """Keyword arguments accepted by every create_from_* factory in 2.14.0."""
    options = {
        "keep_alive": args.keep_alive,
        "connection_retry": connection_retry,
    }
    ca = read_ca()
    if ca is not None:
        options["server_verification_cert"] = ca
    if args.retry_interval is not None:
        options["connection_retry_interval"] = args.retry_interval
    return options


def create_client(args, connection_retry=True):
    """Build an IoTHubDeviceClient / IoTHubModuleClient from the environment."""
    try:
        from azure.iot.device import IoTHubDeviceClient, IoTHubModuleClient, X509
    except ImportError as exc:
        fail(EXIT_USAGE, type="ImportError",
             message="azure-iot-device is not installed: {} "
                     "(pip install -r requirements.txt)".format(exc))

    options = client_options(args, connection_retry=connection_retry)
    conn_str = os.environ.get("FAKEHUB_CONNECTION_STRING")
    auth = args.auth
    if auth == "auto":
        if conn_str:
            auth = "sas"
        elif os.environ.get("FAKEHUB_CERT_FILE"):
            auth = "x509"
        else:
            fail(EXIT_USAGE, type="ConfigError",
                 message="set FAKEHUB_CONNECTION_STRING (SAS) or FAKEHUB_CERT_FILE etc. (X.509)")

    if auth == "sas":
        if not conn_str:
            fail(EXIT_USAGE, type="ConfigError",
                 message="FAKEHUB_CONNECTION_STRING is not set")
        fields = parse_connection_string(conn_str)
        _secrets.append(fields.get("SharedAccessKey", ""))
        module_id = fields.get("ModuleId")
        cls = IoTHubModuleClient if module_id else IoTHubDeviceClient
        info = {
            "auth": "sas",
            "client_class": cls.__name__,
            "host_name": fields.get("HostName"),
            "gateway_host": fields.get("GatewayHostName"),
            "device_id": fields.get("DeviceId"),
            "module_id": module_id,
        }
        # GatewayHostName comes from the connection string itself; passing
        # gateway_hostname= here is rejected by 2.14.0 (TypeError).
        client = cls.create_from_connection_string(conn_str, **options)
        return client, info

    # X.509
    env = {}
    for name in ("FAKEHUB_CERT_FILE", "FAKEHUB_KEY_FILE", "FAKEHUB_HOST_NAME",
                 "FAKEHUB_DEVICE_ID"):
        env[name] = os.environ.get(name)
        if not env[name]:
            fail(EXIT_USAGE, type="ConfigError",
                 message="{} is not set (needed for X.509 auth)".format(name))
    gateway = os.environ.get("FAKEHUB_GATEWAY_HOST")
    module_id = os.environ.get("FAKEHUB_MODULE_ID")
    if gateway:
        options["gateway_hostname"] = gateway
    x509 = X509(cert_file=env["FAKEHUB_CERT_FILE"], key_file=env["FAKEHUB_KEY_FILE"])
    if module_id:
        cls = IoTHubModuleClient
        client = cls.create_from_x509_certificate(
            x509=x509, hostname=env["FAKEHUB_HOST_NAME"],
            device_id=env["FAKEHUB_DEVICE_ID"], module_id=module_id, **options)
    else:
        cls = IoTHubDeviceClient
        client = cls.create_from_x509_certificate(
            x509=x509, hostname=env["FAKEHUB_HOST_NAME"],
            device_id=env["FAKEHUB_DEVICE_ID"], **options)
    info = {
        "auth": "x509",
        "client_class": cls.__name__,
        "host_name": env["FAKEHUB_HOST_NAME"],
        "gateway_host": gateway,
        "device_id": env["FAKEHUB_DEVICE_ID"],
        "module_id": module_id,
    }
    return client, info


def sdk_version():
    try:
        from azure.iot.device.constant import VERSION
        return VERSION
    except ImportError:
        return None


def setup(args, connection_retry=True, watch_connection=False):
    """Common start: watchdog, start line, client with background handlers."""
    start_watchdog(args.deadline)
    version = sdk_version()
    try:
        client, info = create_client(args, connection_retry=connection_retry)
    except (ValueError, TypeError) as exc:
        fail(EXIT_USAGE, type="ConfigError", error=describe_exception(exc))
    emit("start", scenario=args.scenario, sdk_version=version,
         sdk_version_ok=(version == EXPECTED_SDK_VERSION), **info)

    state = ConnectionWatcher(client)
    # Client-event handlers (not receive handlers), so they do not lock the
    # client into "handler receive mode" and cost no subscription.
    client.on_background_exception = state.on_background_exception
    if watch_connection:
        client.on_connection_state_change = state.on_connection_state_change
    return client, state


class ConnectionWatcher:
    """Records connection state changes and background exceptions.

    The SDK runs client-event handlers on a thread pool (4 workers) and gives
    them no argument, so the state printed is client.connected as read when
    the handler runs; a drop + fast reconnect can show up as two `true`s.
    That is why a ConnectionDroppedError background exception (which the SDK
    reports on every unexpected disconnect) also counts as a drop.
    """

    def __init__(self, client):
        self.client = client
        self.lock = threading.Lock()
        self.changes = 0
        self.disconnected_events = 0   # connection_state false seen
        self.dropped_errors = 0        # ConnectionDroppedError background exceptions
        self.reconnects = 0            # connection_state true seen after a drop

    @property
    def dropped(self):
        with self.lock:
            return self.disconnected_events > 0 or self.dropped_errors > 0

    def counters(self):
        with self.lock:
            return {"disconnected_events": self.disconnected_events,
                    "dropped_errors": self.dropped_errors,
                    "reconnects": self.reconnects}

    def on_connection_state_change(self):
        connected = bool(self.client.connected)
        with self.lock:
            self.changes += 1
            if not connected:
                self.disconnected_events += 1
            elif self.disconnected_events or self.dropped_errors:
                self.reconnects += 1
            change = self.changes
        emit("connection_state", connected=connected, change=change)

    def on_background_exception(self, exc):
        info = describe_exception(exc)
        if info["type"] == "ConnectionDroppedError":
            with self.lock:
                self.dropped_errors += 1
        emit("background_exception", **info)


def connect(client, args):
    """connect() with a timeout; prints connected or exits non-zero."""
    try:
        call_with_timeout(args.connect_timeout, client.connect)
    except CallTimeout as exc:
        fail(EXIT_TIMEOUT, type="Timeout", during="connect", message=str(exc))
    except Exception as exc:  # noqa: B902 - any SDK error is reported
        fail(EXIT_FAILED, during="connect", **describe_exception(exc))
    emit("connected")


def shutdown(client, args, exit_on_error=True):
    """shutdown() (MQTT DISCONNECT + pipeline stop) with a timeout."""
    try:
        call_with_timeout(args.shutdown_timeout, client.shutdown)
    except CallTimeout as exc:
        if exit_on_error:
            fail(EXIT_TIMEOUT, type="Timeout", during="shutdown", message=str(exc))
        emit("error", type="Timeout", during="shutdown", message=str(exc))
        return False
    except Exception as exc:  # noqa: B902
        if exit_on_error:
            fail(EXIT_FAILED, during="shutdown", **describe_exception(exc))
        emit("error", during="shutdown", **describe_exception(exc))
        return False
    emit("shutdown")
    return True


def set_handler(client, attribute, handler, args):
    """Set a receive handler; this subscribes, so bound it with a timeout."""
    try:
        call_with_timeout(args.connect_timeout, setattr, client, attribute, handler)
    except CallTimeout as exc:
        fail(EXIT_TIMEOUT, type="Timeout", during="subscribe " + attribute,
             message=str(exc))
    except Exception as exc:  # noqa: B902
        fail(EXIT_FAILED, during="subscribe " + attribute, **describe_exception(exc))


def wait_event(event, timeout, what):
    if not event.wait(timeout):
        fail(EXIT_TIMEOUT, type="Timeout", during=what,
             message="nothing received within {} s".format(timeout))


def payload_fields(data):
    """Message body as text when it is UTF-8, else base64."""
    if data is None:
        return {"data": None}
    if isinstance(data, str):
        return {"data": data}
    try:
        return {"data": bytes(data).decode("utf-8")}
    except UnicodeDecodeError:
        return {"data_base64": base64.b64encode(bytes(data)).decode("ascii")}


def numbered_message(seq):
    """The telemetry message used everywhere: id m-<seq>, JSON body {"seq": n}."""
    from azure.iot.device import Message

    msg = Message(
        json.dumps({"seq": seq}),
        message_id="m-{}".format(seq),
        content_encoding="utf-8",
        content_type="application/json",
    )
    msg.custom_properties["seq"] = str(seq)
    return msg


# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------

def scenario_telemetry(args):
    client, _ = setup(args)
    connect(client, args)
    for seq in range(args.count):
        msg = numbered_message(seq)
        try:
            call_with_timeout(args.send_timeout, client.send_message, msg)
        except CallTimeout as exc:
            fail(EXIT_TIMEOUT, type="Timeout", during="send", message_id=msg.message_id,
                 message=str(exc))
        except Exception as exc:  # noqa: B902
            fail(EXIT_FAILED, during="send", message_id=msg.message_id,
                 **describe_exception(exc))
        emit("sent", message_id=msg.message_id, seq=seq)
        if args.interval > 0 and seq + 1 < args.count:
            time.sleep(args.interval)
    shutdown(client, args)
    finish(EXIT_OK, sent=args.count)


def scenario_bad_key(args):
    # connection_retry=False: no automatic reconnect attempts at all. (In
    # 2.14.0 a failed *initial* connect() is never retried anyway; retry only
    # applies after an established connection drops.)
    client, _ = setup(args, connection_retry=False)
    try:
        call_with_timeout(args.connect_timeout, client.connect)
    except CallTimeout as exc:
        fail(EXIT_TIMEOUT, type="Timeout", during="connect", message=str(exc))
    except Exception as exc:  # noqa: B902 - this is the expected path
        info = describe_exception(exc)
        emit("connect_failed", **info)
        ok = args.expect == "any" or info["type"] == args.expect
        if args.linger > 0:
            # stay alive so the hub can see that no further CONNECT follows
            time.sleep(args.linger)
        shutdown(client, args, exit_on_error=False)
        if not ok:
            fail(EXIT_FAILED, type="UnexpectedException",
                 message="expected {}, got {}".format(args.expect, info["type"]))
        finish(EXIT_OK, exception=info["type"])
    emit("error", type="UnexpectedSuccess", message="connect() succeeded with a bad key")
    shutdown(client, args, exit_on_error=False)
    finish(EXIT_FAILED)


def scenario_connect_shutdown(args):
    client, _ = setup(args)
    connect(client, args)
    if args.hold > 0:
        time.sleep(args.hold)
        emit("held", seconds=args.hold, connected=bool(client.connected))
    shutdown(client, args)
    finish(EXIT_OK)


def scenario_receive_c2d(args):
    client, _ = setup(args)
    connect(client, args)
    lock = threading.Lock()
    received = []
    enough = threading.Event()

    def on_message(message):
        fields = payload_fields(message.data)
        with lock:
            received.append(message.message_id)
            index = len(received)
        emit("c2d", index=index, message_id=message.message_id,
             correlation_id=message.correlation_id, content_type=message.content_type,
             content_encoding=message.content_encoding,
             custom_properties=dict(message.custom_properties),
             input_name=getattr(message, "input_name", None), **fields)
        if index >= args.count:
            enough.set()

    # IoTHubModuleClient delivers input messages (not C2D) to this handler.
    set_handler(client, "on_message_received", on_message, args)
    emit("ready", waiting_for=args.count)
    wait_event(enough, args.timeout, "receive-c2d")
    shutdown(client, args)
    finish(EXIT_OK, received=len(received))


def scenario_method(args):
    from azure.iot.device import MethodResponse

    client, _ = setup(args)
    connect(client, args)
    answered = threading.Event()
    outcome = {}

    def on_method(request):
        emit("method_request", name=request.name, request_id=request.request_id,
             payload=request.payload)
        if request.name == args.name and not answered.is_set():
            status, payload = 200, {"echo": request.payload}
        else:
            # answer anything else too, so the hub is never left waiting
            status, payload = 404, {"error": "unknown method {}".format(request.name)}
        response = MethodResponse.create_from_method_request(request, status, payload)
        try:
            call_with_timeout(args.send_timeout, client.send_method_response, response)
        except Exception as exc:  # noqa: B902 - includes CallTimeout
            emit("error", during="send_method_response", **describe_exception(exc))
            if request.name == args.name:
                outcome["error"] = True
                answered.set()
            return
        emit("method_response", name=request.name, request_id=request.request_id,
             status=status, payload=payload)
        if request.name == args.name:
            answered.set()

    set_handler(client, "on_method_request_received", on_method, args)
    emit("ready", method=args.name)
    wait_event(answered, args.timeout, "method")
    if outcome.get("error"):
        shutdown(client, args, exit_on_error=False)
        finish(EXIT_FAILED)
    shutdown(client, args)
    finish(EXIT_OK)


def scenario_twin(args):
    try:
        patch = json.loads(args.reported)
    except ValueError as exc:
        fail(EXIT_USAGE, type="ConfigError", message="--reported is not JSON: {}".format(exc))
    client, _ = setup(args)
    connect(client, args)
    try:
        twin = call_with_timeout(args.timeout, client.get_twin)
    except CallTimeout as exc:
        fail(EXIT_TIMEOUT, type="Timeout", during="get_twin", message=str(exc))
    except Exception as exc:  # noqa: B902
        fail(EXIT_FAILED, during="get_twin", **describe_exception(exc))
    emit("twin", twin=twin)
    try:
        call_with_timeout(args.timeout, client.patch_twin_reported_properties, patch)
    except CallTimeout as exc:
        fail(EXIT_TIMEOUT, type="Timeout", during="patch_twin_reported_properties",
             message=str(exc))
    except Exception as exc:  # noqa: B902
        fail(EXIT_FAILED, during="patch_twin_reported_properties", **describe_exception(exc))
    emit("reported_patched", patch=patch)
    shutdown(client, args)
    finish(EXIT_OK)


def scenario_desired(args):
    client, _ = setup(args)
    # Connect BEFORE setting the handler: enabling desired-property patches
    # arms the SDK's "ensure desired properties" logic, which sends a twin GET
    # on every (re)connect and may synthesise a patch from the full desired
    # section. Connecting first keeps the first patch a real PATCH publish.
    connect(client, args)
    got = threading.Event()
    lock = threading.Lock()
    patches = []

    def on_patch(patch):
        with lock:
            patches.append(patch)
            index = len(patches)
        emit("desired", index=index, patch=patch)
        got.set()

    set_handler(client, "on_twin_desired_properties_patch_received", on_patch, args)
    emit("ready")
    wait_event(got, args.timeout, "desired")
    shutdown(client, args)
    finish(EXIT_OK)


def scenario_session(args):
    """C2D messages and method calls on one client for as long as it takes, across reconnects.

    Both handlers are set once, right after the first connect, so the SDK subscribes once; after a
    drop it reconnects with CleanSession=0 and never subscribes again, so everything after that
    arrives only because the hub kept the session.
    """
    from azure.iot.device import MethodResponse

    client, state = setup(args, watch_connection=True)
    connect(client, args)
    lock = threading.Lock()
    counts = {"c2d": 0, "methods": 0}
    done = threading.Event()

    def check_done():
        if counts["c2d"] >= args.c2d and counts["methods"] >= args.methods:
            done.set()

    def on_message(message):
        fields = payload_fields(message.data)
        with lock:
            counts["c2d"] += 1
            index = counts["c2d"]
        emit("c2d", index=index, message_id=message.message_id,
             custom_properties=dict(message.custom_properties), **fields)
        with lock:
            check_done()

    def on_method(request):
        with lock:
            counts["methods"] += 1
            index = counts["methods"]
        emit("method_request", index=index, name=request.name, request_id=request.request_id,
             payload=request.payload)
        response = MethodResponse.create_from_method_request(
            request, 200, {"echo": request.payload, "index": index})
        try:
            call_with_timeout(args.send_timeout, client.send_method_response, response)
        except Exception as exc:  # noqa: B902 - includes CallTimeout
            emit("error", during="send_method_response", **describe_exception(exc))
            return
        emit("method_response", index=index, name=request.name, request_id=request.request_id)
        with lock:
            check_done()

    set_handler(client, "on_message_received", on_message, args)
    set_handler(client, "on_method_request_received", on_method, args)
    emit("ready", c2d=args.c2d, methods=args.methods)
    wait_event(done, args.timeout, "session")
    emit("summary", connected=bool(client.connected), **state.counters(), **counts)
    shutdown(client, args)
    finish(EXIT_OK)


class Sender:
    """Sends numbered messages, each in its own thread, recording outcomes.

    send_message() blocks until PUBACK; while the connection is down paho keeps
    the PUBLISH and re-sends it (DUP=1, same packet id) after the SDK has
    reconnected, so a send started during an outage may complete much later.
    Each send therefore runs in its own daemon thread and prints its own
    outcome line when it finishes (with the time it took).
    """

    def __init__(self, client):
        self.client = client
        self.lock = threading.Lock()
        self.status = {}   # message_id -> "pending" | "sent" | "failed"
        self.threads = []

    def send(self, msg, seq=None, step_ok="sent", step_failed="send_failed"):
        with self.lock:
            self.status[msg.message_id] = "pending"

        def run():
            started = time.monotonic()
            try:
                self.client.send_message(msg)
            except Exception as exc:  # noqa: B902 - failures are printed, not fatal
                with self.lock:
                    self.status[msg.message_id] = "failed"
                emit(step_failed, message_id=msg.message_id, seq=seq,
                     seconds=round(time.monotonic() - started, 3),
                     **describe_exception(exc))
                return
            with self.lock:
                self.status[msg.message_id] = "sent"
            emit(step_ok, message_id=msg.message_id, seq=seq,
                 seconds=round(time.monotonic() - started, 3))

        thread = threading.Thread(target=run, name="send-" + str(msg.message_id), daemon=True)
        self.threads.append(thread)
        thread.start()
        return thread

    def drain(self, timeout):
        """Wait up to `timeout` s in total for outstanding sends."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            thread.join(remaining)

    def summary(self, ids):
        with self.lock:
            result = {"sent": [], "failed": [], "pending": []}
            for message_id in ids:
                result[self.status.get(message_id, "pending")].append(message_id)
        return result


def send_numbered_for(sender, args):
    """Start a numbered send every --interval s for --duration s; return ids."""
    ids = []
    seq = 0
    start = time.monotonic()
    while True:
        due = start + seq * args.interval
        if due - start >= args.duration:
            break
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        msg = numbered_message(seq)
        ids.append(msg.message_id)
        emit("sending", message_id=msg.message_id, seq=seq)
        sender.send(msg, seq=seq)
        seq += 1
    return ids


def scenario_keep_sending(args):
    client, state = setup(args, watch_connection=True)
    connect(client, args)
    sender = Sender(client)
    ids = send_numbered_for(sender, args)
    sender.drain(args.send_timeout)
    summary = sender.summary(ids)
    emit("summary", connected=bool(client.connected), **state.counters(), **summary)
    shutdown(client, args, exit_on_error=False)
    if not summary["failed"] and not summary["pending"]:
        finish(EXIT_OK)
    if args.allow_send_failures and ids and sender.status.get(ids[-1]) == "sent":
        finish(EXIT_OK)
    finish(EXIT_FAILED, reason="some messages were not acknowledged")


def scenario_kill_tcp(args):
    client, state = setup(args, watch_connection=True)
    connect(client, args)
    sender = Sender(client)

    # The fault-injection trigger: the hub reads these properties, never
    # PUBACKs this PUBLISH and resets the TCP connection after the delay.
    # paho keeps the un-acked PUBLISH and re-sends it (DUP=1) after the
    # reconnect, so the hub sees the trigger twice unless it acks the DUP.
    from azure.iot.device import Message

    trigger = Message(json.dumps({"fault": "KillTcp"}), message_id="fault-kill-tcp",
                      content_encoding="utf-8", content_type="application/json")
    trigger.custom_properties.update({
        "AzIoTHub_FaultOperationType": "KillTcp",
        "AzIoTHub_FaultOperationCloseReason": args.reason,
        "AzIoTHub_FaultOperationDelayInSecs": str(args.delay),
    })
    emit("trigger_sending", message_id=trigger.message_id, delay=args.delay)
    sender.send(trigger, step_ok="trigger_acked", step_failed="trigger_failed")

    ids = send_numbered_for(sender, args)
    sender.drain(args.send_timeout)
    summary = sender.summary(ids)
    trigger_status = sender.status.get(trigger.message_id)
    emit("summary", connected=bool(client.connected), trigger=trigger_status,
         **state.counters(), **summary)
    shutdown(client, args, exit_on_error=False)

    last_ok = bool(ids) and sender.status.get(ids[-1]) == "sent"
    if not state.dropped:
        finish(EXIT_FAILED, reason="the connection never dropped")
    if not last_ok:
        finish(EXIT_FAILED, reason="the last message was not acknowledged after the drop")
    finish(EXIT_OK)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(
        prog="sdk_client.py",
        description="Drive azure-iot-device {} against fakehub; prints one JSON "
                    "object per line. Exit codes: 0 expected outcome, 1 unexpected "
                    "outcome, 2 usage/environment error, 3 wait timed out, "
                    "4 global deadline.".format(EXPECTED_SDK_VERSION),
        epilog="Environment: FAKEHUB_CONNECTION_STRING, FAKEHUB_CA_FILE; for X.509: "
               "FAKEHUB_CERT_FILE, FAKEHUB_KEY_FILE, FAKEHUB_HOST_NAME, "
               "FAKEHUB_DEVICE_ID, FAKEHUB_GATEWAY_HOST [FAKEHUB_MODULE_ID].")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--auth", choices=["auto", "sas", "x509"], default="auto",
                        help="auto: SAS when FAKEHUB_CONNECTION_STRING is set, else X.509")
    common.add_argument("--connect-timeout", type=float, default=30.0, metavar="S",
                        help="timeout for connect() and for subscribing (default 30)")
    common.add_argument("--send-timeout", type=float, default=30.0, metavar="S",
                        help="timeout for one send / method response (default 30)")
    common.add_argument("--shutdown-timeout", type=float, default=15.0, metavar="S",
                        help="timeout for shutdown() (default 15)")
    common.add_argument("--keep-alive", type=int, default=60, metavar="S",
                        help="MQTT keep-alive sent in CONNECT (SDK default 60)")
    common.add_argument("--retry-interval", type=int, default=None, metavar="S",
                        help="connection_retry_interval (SDK default 10)")
    common.add_argument("--deadline", type=float, default=None, metavar="S",
                        help="hard limit for the whole run (default: derived)")
    common.add_argument("--verbose", action="store_true",
                        help="SDK/paho debug logging to stderr")

    sub = parser.add_subparsers(dest="scenario", metavar="SCENARIO")
    sub.required = True

    p = sub.add_parser("telemetry", parents=[common],
                       help="send --count QoS1 messages m-0..m-(N-1), then shutdown")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--interval", type=float, default=0.0, metavar="S",
                   help="pause between messages (default 0)")
    p.set_defaults(func=scenario_telemetry)

    p = sub.add_parser("bad-key", parents=[common],
                       help="connect must fail (CONNACK 5 -> CredentialError)")
    p.add_argument("--expect", default="CredentialError",
                   help="exception class name expected from connect(), or 'any'")
    p.add_argument("--linger", type=float, default=0.0, metavar="S",
                   help="stay alive S seconds after the failure (shows no retry)")
    p.set_defaults(func=scenario_bad_key)

    p = sub.add_parser("connect-shutdown", parents=[common],
                       help="connect, then shutdown() (MQTT DISCONNECT)")
    p.add_argument("--hold", type=float, default=0.0, metavar="S",
                   help="stay connected S seconds before shutdown (default 0)")
    p.set_defaults(func=scenario_connect_shutdown)

    p = sub.add_parser("receive-c2d", parents=[common],
                       help="print C2D messages, exit after --count")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=30.0, metavar="S")
    p.set_defaults(func=scenario_receive_c2d)

    p = sub.add_parser("method", parents=[common],
                       help="answer direct method --name with 200 {\"echo\": payload}")
    p.add_argument("--name", required=True)
    p.add_argument("--timeout", type=float, default=30.0, metavar="S")
    p.set_defaults(func=scenario_method)

    p = sub.add_parser("twin", parents=[common],
                       help="get_twin(), then patch reported properties")
    p.add_argument("--reported", default='{"firmware": "1.2.3"}', metavar="JSON",
                   help="reported-properties patch (default {\"firmware\": \"1.2.3\"})")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="timeout for each twin request (default 30)")
    p.set_defaults(func=scenario_twin)

    p = sub.add_parser("desired", parents=[common],
                       help="print the first desired-properties patch")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S")
    p.set_defaults(func=scenario_desired)

    p = sub.add_parser("session", parents=[common],
                       help="receive --c2d messages and answer --methods calls, across reconnects")
    p.add_argument("--c2d", type=int, default=1, metavar="N")
    p.add_argument("--methods", type=int, default=1, metavar="N")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S")
    p.set_defaults(func=scenario_session)

    for name, func, help_text in (
            ("keep-sending", scenario_keep_sending,
             "send m-0, m-1, ... every --interval for --duration; print reconnects"),
            ("kill-tcp", scenario_kill_tcp,
             "send a KillTcp fault-injection trigger, then keep sending")):
        p = sub.add_parser(name, parents=[common], help=help_text)
        p.add_argument("--interval", type=float, default=1.0, metavar="S",
                       help="seconds between messages (default 1)")
        p.add_argument("--duration", type=float, default=20.0 if name == "kill-tcp" else 10.0,
                       metavar="S", help="how long to keep sending")
        if name == "kill-tcp":
            p.add_argument("--delay", type=int, default=1, metavar="S",
                           help="AzIoTHub_FaultOperationDelayInSecs (default 1)")
            p.add_argument("--reason", default="boom",
                           help="AzIoTHub_FaultOperationCloseReason (default boom)")
        else:
            p.add_argument("--allow-send-failures", action="store_true",
                           help="exit 0 if failures happened but the last message was acked")
        p.set_defaults(func=func)
    return parser


def default_deadline(args):
    """A generous upper bound for the whole run, from the scenario's own limits."""
    base = args.connect_timeout * 2 + args.shutdown_timeout + 15
    if args.scenario == "telemetry":
        return base + args.count * (args.send_timeout + args.interval)
    if args.scenario in ("receive-c2d", "desired"):
        return base + args.timeout
    if args.scenario == "method":
        return base + args.timeout + args.send_timeout
    if args.scenario == "session":
        return base + args.timeout + args.send_timeout
    if args.scenario == "twin":
        return base + 2 * args.timeout
    if args.scenario in ("keep-sending", "kill-tcp"):
        return base + args.duration + args.send_timeout
    if args.scenario == "bad-key":
        return base + args.linger
    if args.scenario == "connect-shutdown":
        return base + args.hold
    return base


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.deadline is None:
        args.deadline = default_deadline(args)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Belt and braces: nothing logged may carry a key or token.
    for handler in logging.getLogger().handlers:
        handler.addFilter(_RedactingFilter())
    try:
        args.func(args)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: B902 - a bug here must still end cleanly
        fail(EXIT_FAILED, during="scenario", **describe_exception(exc))
    finish(EXIT_FAILED, reason="scenario returned without a verdict")


class _RedactingFilter(logging.Filter):
    def filter(self, record):
        try:
            message = record.getMessage()
        except Exception:  # noqa: B902 - a bad log call must not crash us
            return True
        record.msg = redact(message)
        record.args = None
        return True


if __name__ == "__main__":
    main()
