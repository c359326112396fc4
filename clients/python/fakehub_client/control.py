"""The control API of ``fakehub serve`` (``/fakehub/...``), over HTTPS with a SAS token."""

import base64
import hashlib
import hmac
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request


def parse_connection_string(text):
    """``Key=Value;...`` as a dict."""
    fields = {}
    for part in text.strip().split(";"):
        if "=" in part:
            key, value = part.split("=", 1)
            fields[key.strip()] = value.strip()
    return fields


def service_token(connection_string, ttl=3600):
    """A SAS token of the policy in a service connection string, valid ``ttl`` seconds.

    Signed the way the Python service SDK signs (``sr`` is the URL-encoded HostName, port included
    when there is one). The token is a secret: never log it.
    """
    cs = parse_connection_string(connection_string)
    expiry = int(time.time()) + int(ttl)
    resource = urllib.parse.quote_plus(cs["HostName"])
    key = base64.b64decode(cs["SharedAccessKey"])
    signed = hmac.new(key, "{}\n{}".format(resource, expiry).encode(), hashlib.sha256).digest()
    signature = urllib.parse.quote(base64.b64encode(signed).decode(), safe="")
    return "SharedAccessSignature sr={}&sig={}&se={}&skn={}".format(
        resource, signature, expiry, cs["SharedAccessKeyName"])


class ControlError(Exception):
    """The control API refused a request: ``status``, and the answer's ``body`` (parsed JSON when
    it is JSON). For a 400, ``field`` and ``message`` say what did not fit."""

    def __init__(self, status, body):
        self.status = status
        self.body = body
        error = body.get("error", {}) if isinstance(body, dict) else {}
        self.field = error.get("field")
        self.message = error.get("message") or (body.get("Message") if isinstance(body, dict) else str(body))
        super().__init__("{}: {}{}".format(
            status, "`{}`: ".format(self.field) if self.field else "", self.message))


class ControlClient:
    """Calls the control API at ``base_url`` (``https://127.x.y.z:443``), trusting ``ca_file``,
    authenticated with the policy of ``connection_string`` (it needs ServiceConnect)."""

    def __init__(self, base_url, ca_file, connection_string, timeout=120.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._connection_string = connection_string
        self._ssl = ssl.create_default_context(cafile=str(ca_file))

    def __repr__(self):
        return "ControlClient({!r})".format(self.base_url)

    # -- plumbing --------------------------------------------------------------------------

    def request(self, method, path, body=None, authorized=True, raw=False):
        """One request; the answer's JSON (or text with ``raw``), or :class:`ControlError`."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if authorized:
            req.add_header("Authorization", service_token(self._connection_string))
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=self.timeout) as answer:
                text = answer.read().decode("utf-8")
                self.last_headers = dict(answer.headers)
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace")
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = text
            raise ControlError(e.code, parsed) from None
        if raw:
            return text
        return json.loads(text) if text.strip() else None

    # -- the timeline ------------------------------------------------------------------------

    def timeline(self, step):
        """Carry out one timeline step, as in a scenario file; returns when it took effect."""
        return self.request("POST", "/fakehub/timeline", step)

    def fault(self, type, devices=None, duration=None, **params):
        """Start a fault; its id (for :meth:`end_fault`). ``devices``: a list of ids, ``"all"``, or
        a selector dict; ``duration``: e.g. ``"90s"``."""
        fault = dict(params, type=type)
        if devices is not None:
            fault["devices"] = devices
        if duration is not None:
            fault["duration"] = duration
        return self.timeline({"fault": fault})["applied"]["fault"]["id"]

    def end_fault(self, fault_id):
        self.request("DELETE", "/fakehub/faults/{}".format(int(fault_id)))

    def faults(self):
        return self.request("GET", "/fakehub/faults")

    def advance(self, duration):
        """Jump the hub's virtual wall time (e.g. ``"65m"``); every deadline inside fires in order.
        Returns the clock after the jump."""
        return self.timeline({"advance": duration})["clock"]

    def c2d(self, device, body, message_id=None, properties=None):
        step = {"device": device, "body": body}
        if message_id is not None:
            step["message_id"] = message_id
        if properties:
            step["properties"] = properties
        return self.timeline({"c2d": step})["applied"]

    def desired(self, device, patch):
        return self.timeline({"desired": {"device": device, "patch": patch}})["applied"]

    def method(self, device, name, payload=None, timeout=None):
        step = {"device": device, "name": name, "payload": payload}
        if timeout is not None:
            step["timeout"] = timeout
        return self.timeline({"method": step})["applied"]

    # -- verdicts and the log ----------------------------------------------------------------

    def expect(self, expectation):
        """Judge one expectation (as in a scenario's ``expect:``) on the log so far:
        ``{"passed", "judged", "summary", "excerpt", "verdicts"}``."""
        return self.request("POST", "/fakehub/expect", expectation)

    def events(self, since=0, wait=None):
        """Events from position ``since``; with ``wait`` (e.g. ``"10s"``) a long poll. Returns
        ``(events, next_since)``."""
        query = {"since": int(since)}
        if wait is not None:
            query["wait"] = wait
        text = self.request("GET", "/fakehub/events?" + urllib.parse.urlencode(query), raw=True)
        events = [json.loads(line) for line in text.splitlines() if line.strip()]
        next_since = int(self.last_headers.get("x-fakehub-next", since))
        return events, next_since

    def wait_for_event(self, predicate, timeout=30.0, since=0):
        """The first event from ``since`` on that ``predicate`` accepts, waiting up to ``timeout``
        seconds (long polls); raises TimeoutError with what was seen."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching event within {} s ({} events seen)".format(timeout, seen))
            events, since = self.events(since, wait="{}ms".format(int(min(left, 10) * 1000)))
            seen += len(events)
            for e in events:
                if predicate(e):
                    return e

    def records(self):
        return self.request("GET", "/fakehub/records")

    def clock(self):
        return self.request("GET", "/fakehub/clock")

    def openapi(self):
        return self.request("GET", "/fakehub/openapi.json", authorized=False)
