#!/usr/bin/env python3
"""A device application on the official Azure IoT Python SDK (azure-iot-device 2.14.0), run by
fakehub's tests as a process device.

Default: IoTHubDeviceClient.create_from_connection_string with the SDK's own token renewal
(a FAKEHUB_TOKEN_TTL_SECS token, renewed 120 s before expiry, a margin the SDK fixes) and its
default reconnect policy. --fixed-token (or device_fixed_token.py): create_from_sastoken with a
token minted here once; it is never replaced, so the hub drops the device at expiry + grace.
With FAKEHUB_CERT_FILE and FAKEHUB_KEY_FILE (the connection string then says x509=true):
create_from_x509_certificate, no token at all.

Reconnecting: by default the app does it, with capped exponential backoff and jitter (1 s
doubling to 60 s, each wait drawn from its upper half), as Azure's retry guidance asks: the SDK's
own reconnect (connection_retry) retries at a fixed 10 s interval. --sdk-retry leaves reconnecting
to the SDK (its default) instead.

Telemetry goes out in order, one message at a time, while connected (the SDK keeps no copy of a
failed send, so the app keeps the message and sends it again once connected).

One line per event on stdout: "<ISO time> <event> [details]". Keys and tokens are never printed.
"""

import base64
import datetime
import hashlib
import hmac
import json
import logging
import os
import queue
import random
import signal
import sys
import threading
import time
import urllib.parse

from azure.iot.device import IoTHubDeviceClient, Message, MethodResponse, X509

SDK_RENEWAL_MARGIN = 120  # azure-iot-device 2.14.0: SasTokenStage.DEFAULT_TOKEN_UPDATE_MARGIN
_print_lock = threading.Lock()
_state = {"renewing": False, "last_error": None, "last_error_at": 0.0}


def log(event, details=""):
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
    with _print_lock:
        sys.stdout.write(f"{now.replace('+00:00', 'Z')} {event}{' ' + details if details else ''}\n")
        sys.stdout.flush()


def fail(message):
    sys.stderr.write(f"device.py: {message}\n")
    sys.exit(2)


def env_seconds(name, default):
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1
    if value <= 0:
        fail(f"{name} must be a positive number of seconds")
    return value


def parse_connection_string(cs):
    fields = dict(part.split("=", 1) for part in cs.split(";") if "=" in part)
    needs = ("HostName", "DeviceId") if fields.get("x509", "").lower() == "true" else (
        "HostName", "DeviceId", "SharedAccessKey")
    for need in needs:
        if not fields.get(need):
            fail(f"FAKEHUB_CONNECTION_STRING has no {need}")
    return fields


def mint_sas(host, device_id, key_b64, expiry):
    """sr = url-encoded "{HostName}/devices/{id}"; sig = HMAC-SHA256(decoded key, sr + "\\n" + se)."""
    sr = urllib.parse.quote(f"{host}/devices/{device_id}", safe="")
    digest = hmac.new(base64.b64decode(key_b64), f"{sr}\n{expiry}".encode(), hashlib.sha256).digest()
    sig = urllib.parse.quote(base64.b64encode(digest).decode(), safe="")
    return f"SharedAccessSignature sr={sr}&sig={sig}&se={expiry}"


def error_text(e):
    if e is None:
        return '"none"'
    text = f"{type(e).__name__}: {e}"
    cause = e.__cause__ or e.__context__
    if cause is not None:
        text += f" (caused by {type(cause).__name__}: {cause})"
    return '"' + " ".join(text.split()).replace('"', "'") + '"'


class SdkRenewalLog(logging.Handler):
    """The SDK renews its token without telling the app; its own log line is the only signal."""

    def emit(self, record):
        message = record.getMessage()
        if "Renewing SAS Token" in message:
            _state["renewing"] = True
            log("renewing token", f"expiry=in {TOKEN_TTL}s")
        elif "Requesting new SAS Token" in message:
            log("token expiring", "action=none (fixed token: no key to mint another, nothing to update)")


def main():
    global TOKEN_TTL
    fixed_token = "--fixed-token" in sys.argv[1:]
    sdk_retry = "--sdk-retry" in sys.argv[1:]
    conn_str = os.environ.get("FAKEHUB_CONNECTION_STRING")
    if not conn_str:
        fail("FAKEHUB_CONNECTION_STRING is not set")
    ca_file = os.environ.get("FAKEHUB_CA_FILE")
    if not ca_file:
        fail("FAKEHUB_CA_FILE is not set")
    try:
        with open(ca_file, encoding="utf-8") as f:
            ca_pem = f.read()
    except OSError as e:
        fail(f"cannot read FAKEHUB_CA_FILE {ca_file}: {e.strerror}")
    if "BEGIN CERTIFICATE" not in ca_pem:
        fail(f"FAKEHUB_CA_FILE {ca_file} holds no PEM certificate")
    cs = parse_connection_string(conn_str)
    telemetry_secs = env_seconds("FAKEHUB_TELEMETRY_SECS", 60)
    TOKEN_TTL = int(env_seconds("FAKEHUB_TOKEN_TTL_SECS", 3600))
    keep_alive = int(env_seconds("FAKEHUB_KEEPALIVE_SECS", 60))
    margin = os.environ.get("FAKEHUB_TOKEN_MARGIN_SECS", "")
    if not fixed_token and TOKEN_TTL <= SDK_RENEWAL_MARGIN:
        fail(f"FAKEHUB_TOKEN_TTL_SECS must exceed the SDK's fixed {SDK_RENEWAL_MARGIN} s renewal margin")

    renewal_logger = logging.getLogger("azure.iot.device.common.pipeline.pipeline_stages_base")
    renewal_logger.setLevel(logging.INFO)
    renewal_logger.addHandler(SdkRenewalLog())

    common = dict(server_verification_cert=ca_pem, keep_alive=keep_alive)
    if not sdk_retry:
        # The app reconnects (with backoff) and sends only while connected.
        common.update(connection_retry=False, auto_connect=False)
    gateway = cs.get("GatewayHostName", "-")
    cert_file, key_file = os.environ.get("FAKEHUB_CERT_FILE"), os.environ.get("FAKEHUB_KEY_FILE")
    if bool(cert_file) != bool(key_file):
        fail("FAKEHUB_CERT_FILE and FAKEHUB_KEY_FILE go together")
    if cert_file:
        if "GatewayHostName" in cs:
            common["gateway_hostname"] = cs["GatewayHostName"]
        log("start", f"sdk=python azure-iot-device==2.14.0 device={cs['DeviceId']} host={cs['HostName']} "
                     f"gateway={gateway} auth=x509")
        client = IoTHubDeviceClient.create_from_x509_certificate(
            X509(cert_file=cert_file, key_file=key_file), hostname=cs["HostName"],
            device_id=cs["DeviceId"], **common)
    elif fixed_token:
        expiry = int(time.time()) + TOKEN_TTL
        sas = mint_sas(cs["HostName"], cs["DeviceId"], cs["SharedAccessKey"], expiry)
        if "GatewayHostName" in cs:
            common["gateway_hostname"] = cs["GatewayHostName"]
        expires = datetime.datetime.fromtimestamp(expiry, datetime.timezone.utc).isoformat()
        log("start", f"sdk=python azure-iot-device==2.14.0 device={cs['DeviceId']} host={cs['HostName']} "
                     f"gateway={gateway} auth=fixed-token expiry={expires.replace('+00:00', 'Z')}")
        client = IoTHubDeviceClient.create_from_sastoken(sas, **common)
    else:
        note = f" (FAKEHUB_TOKEN_MARGIN_SECS={margin} ignored: the SDK fixes it)" if margin else ""
        log("start", f"sdk=python azure-iot-device==2.14.0 device={cs['DeviceId']} host={cs['HostName']} "
                     f"gateway={gateway} auth=sdk-renewed ttl={TOKEN_TTL}s margin={SDK_RENEWAL_MARGIN}s{note}")
        client = IoTHubDeviceClient.create_from_connection_string(conn_str, sastoken_ttl=TOKEN_TTL, **common)

    def on_background_exception(e):
        _state["last_error"], _state["last_error_at"] = e, time.monotonic()
        log("error", f"reason={error_text(e)}")

    online = threading.Event()
    reconnect_wanted = threading.Event()

    def on_connection_state_change():
        if client.connected:
            _state["renewing"] = False
            log("connected")
            online.set()
            return
        online.clear()
        if not _state.get("stopping") and not _state["renewing"]:
            reconnect_wanted.set()
        if _state.get("stopping"):
            reason = '"app shutdown (DISCONNECT sent)"'
        elif _state["renewing"]:
            reason = '"token renewal (SDK disconnects to reconnect with a new token)"'
        elif time.monotonic() - _state["last_error_at"] < 2:
            reason = error_text(_state["last_error"])
        else:  # the SDK reports a drop's cause as a background exception, usually just before
            reason = '"unexpected (no cause reported yet)"'
        log("disconnected", f"reason={reason}")

    def on_message_received(msg):
        props = "&".join(f"{k}={v}" for k, v in sorted(msg.custom_properties.items()))
        body = msg.data.decode("utf-8", "replace") if isinstance(msg.data, bytes) else str(msg.data)
        log("c2d", f"id={msg.message_id or '-'} props=\"{props}\" body={json.dumps(body)}")

    def on_method_request_received(request):
        if request.name == "echo":
            status, payload = 200, request.payload
        else:
            status, payload = 404, {"error": f"no method {request.name}"}
        log("method", f"name={request.name} rid={request.request_id} status={status} "
                      f"payload={json.dumps(request.payload)[:200]}")
        try:
            client.send_method_response(MethodResponse.create_from_method_request(request, status, payload))
        except Exception as e:  # noqa: BLE001 - a failed response is an event, not a crash
            log("method response failed", f"rid={request.request_id} reason={error_text(e)}")

    client.on_background_exception = on_background_exception
    client.on_connection_state_change = on_connection_state_change

    stop = threading.Event()
    received = {}

    def on_signal(signum, _frame):
        received["signal"] = signal.Signals(signum).name
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    outbox = queue.Queue()

    def sender():
        # One message at a time, in order. While disconnected the SDK fails a send at once (its
        # auto-connect failed) and keeps no copy, so the app keeps the message and tries again.
        while True:
            n = outbox.get()
            msg = Message(f'{{"seq": {n}}}', message_id=f"seq-{n}", content_encoding="utf-8",
                          content_type="application/json")
            msg.custom_properties["seq"] = str(n)
            while not stop.is_set():
                if not sdk_retry and not online.is_set():
                    online.wait(1)
                    continue
                log("sent", f"seq-{n}")
                try:
                    client.send_message(msg)  # returns on PUBACK
                    log("acked", f"seq-{n}")
                    break
                except Exception as e:  # noqa: BLE001
                    if sdk_retry:
                        log("send failed", f"seq-{n} reason={error_text(e)} retry_in=10s")
                        stop.wait(10)
                    else:
                        log("send failed", f"seq-{n} reason={error_text(e)} retry=when-connected")
                        online.wait(1)

    def reconnector():
        # Capped exponential backoff with jitter; the first retry waits 0.5–1 s.
        attempt = 0
        while not stop.is_set():
            if not reconnect_wanted.wait(0.5):
                continue
            if client.connected:
                reconnect_wanted.clear()
                attempt = 0
                continue
            delay = min(60.0, 2.0 ** attempt) * random.uniform(0.5, 1.0)
            attempt += 1
            log("reconnecting", f"attempt={attempt} in={delay:.2f}s")
            if stop.wait(delay):
                return
            try:
                client.connect()
                reconnect_wanted.clear()
                attempt = 0
            except Exception as e:  # noqa: BLE001
                log("connect failed", f"reason={error_text(e)}")

    def setup():
        # The SDK does not retry a failed first connect; a device must keep trying.
        while not stop.is_set():
            try:
                client.connect()
                client.on_message_received = on_message_received  # SUBSCRIBE, once
                client.on_method_request_received = on_method_request_received
                return True
            except Exception as e:  # noqa: BLE001
                log("connect failed", f"reason={error_text(e)} next_try_in=10s")
                stop.wait(10)
        return False

    # SDK calls block without a timeout, so they run on worker threads and the main thread
    # stays free to notice a signal.
    setup_thread = threading.Thread(target=setup, daemon=True)
    setup_thread.start()
    while setup_thread.is_alive() and not stop.wait(0.2):
        pass
    threading.Thread(target=sender, daemon=True).start()
    if not sdk_retry:
        threading.Thread(target=reconnector, daemon=True).start()
    seq = 0
    next_send = time.monotonic()
    while not stop.is_set():
        if time.monotonic() >= next_send:
            seq += 1
            outbox.put(seq)
            next_send += telemetry_secs
        stop.wait(max(0.05, min(1.0, next_send - time.monotonic())))

    _state["stopping"] = True
    log("stopping", f"signal={received.get('signal', '?')}")
    done = threading.Event()

    def shutdown():
        try:
            client.shutdown()  # sends MQTT DISCONNECT
            log("stopped", "disconnect=sent")
        except Exception as e:  # noqa: BLE001
            log("stopped", f"disconnect=failed reason={error_text(e)}")
        done.set()

    threading.Thread(target=shutdown, daemon=True).start()
    if not done.wait(15):
        log("stopped", "disconnect=timed-out")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
