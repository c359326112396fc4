"""Start and stop ``fakehub serve`` for a test."""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from .control import ControlClient, parse_connection_string


class FakeHubError(Exception):
    """``fakehub serve`` did not start (the message holds what it printed)."""


def free_loopback_ip(ports=(8883, 443)):
    """A loopback address ``127.x.y.z`` on which every port in ``ports`` is free now.

    Linux routes all of 127.0.0.0/8 to loopback, so each hub of a test run gets an address of its
    own and the ports the SDKs insist on (8883 for devices, 443 for the Node service SDK) do not
    collide."""
    rng = random.Random(os.getpid() ^ time.time_ns())
    for _ in range(1000):
        ip = "127.{}.{}.{}".format(rng.randint(1, 254), rng.randint(0, 255), rng.randint(2, 254))
        try:
            for port in ports:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((ip, port))
        except OSError:
            continue
        return ip
    raise FakeHubError("no free loopback address for ports {}".format(ports))


def find_binary():
    """``$FAKEHUB_BIN``, else ``fakehub`` on the PATH."""
    explicit = os.environ.get("FAKEHUB_BIN")
    if explicit:
        return explicit
    found = shutil.which("fakehub")
    if not found:
        raise FakeHubError("set FAKEHUB_BIN to the fakehub binary (or put fakehub on the PATH)")
    return found


class FakeHub:
    """A running ``fakehub serve``.

    It listens on a loopback address of its own, ``127.x.y.z``: MQTT on 8883 (where the device
    SDKs connect) and the service API on ``service_port`` (443 by default, where the service SDKs
    connect; below 1024 needs root or CAP_NET_BIND_SERVICE). The IoT Hub host name is that address,
    so ``HostName=`` of every connection string reaches the hub with no DNS entry.

    ``devices``: ids, or dicts as in the serve config (``{"id": ..., "modules": [...]}``);
    ``config``: any other serve config keys (``token_grace``, ``policies``, ...).
    """

    def __init__(self, devices=("sensor-1",), out_dir=None, service_port=443, binary=None,
                 start_timeout=30.0, **config):
        self.binary = binary or find_binary()
        self._own_dir = None
        if out_dir is None:
            self._own_dir = tempfile.mkdtemp(prefix="fakehub-")
            out_dir = Path(self._own_dir) / "out"
        self.out_dir = Path(out_dir)
        self.ip = free_loopback_ip((8883, service_port))
        self.service_port = service_port
        self.host_name = self.ip
        self.config = dict(config)
        self.config.setdefault("host_name", self.host_name)
        self.config.setdefault("listen", "{}:8883".format(self.ip))
        self.config.setdefault("service_listen", "{}:{}".format(self.ip, service_port))
        self.config["out"] = str(self.out_dir)
        self.config["devices"] = [d if isinstance(d, dict) else {"id": d} for d in devices]
        self.console = []
        self._process = None
        self._start(start_timeout)

    # -- life ----------------------------------------------------------------------------

    def _start(self, timeout):
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.config_file = self.out_dir.parent / "fakehub-serve.yaml"
        # JSON is YAML.
        self.config_file.write_text(json.dumps(self.config, indent=2))
        self._process = subprocess.Popen(
            [self.binary, "serve", "--config", str(self.config_file)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        listening = threading.Event()
        said = []

        def read():
            for line in self._process.stderr:
                self.console.append(line.rstrip("\n"))
                if "listening on" in line:
                    said.append(line)
                    listening.set()
            # It ended: whoever waits for it learns at once.
            listening.set()

        threading.Thread(target=read, name="fakehub-console", daemon=True).start()
        if not listening.wait(timeout) or not said:
            self.stop()
            raise FakeHubError("fakehub serve did not start:\n" + "\n".join(self.console))
        self.ca_file = self.out_dir / "ca.pem"
        self.connection_strings = {}
        for line in (self.out_dir / "connection-strings.txt").read_text().splitlines():
            cs = parse_connection_string(line)
            who = cs["DeviceId"] + ("/" + cs["ModuleId"] if "ModuleId" in cs else "")
            self.connection_strings[who] = line.strip()
        text = (self.out_dir / "service-connection-string.txt").read_text().strip()
        if self.service_port != 443:
            # The Python service SDK takes HostName=host:port (and signs the port into `sr`);
            # the Node one always uses 443.
            text = text.replace("HostName={};".format(self.host_name),
                                "HostName={}:{};".format(self.host_name, self.service_port), 1)
        self.service_connection_string = text
        self.service_url = "https://{}:{}".format(self.ip, self.service_port)
        self.control = ControlClient(self.service_url, self.ca_file, self.service_connection_string)

    def stop(self, timeout=10.0):
        """SIGTERM, then wait; SIGKILL if it does not stop. Returns the exit status."""
        p, self._process = self._process, None
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._own_dir:
            shutil.rmtree(self._own_dir, ignore_errors=True)
        return p.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- what tests need ---------------------------------------------------------------------

    def connection_string(self, device_id, module_id=None):
        """The device (or module) connection string: a secret, never log it."""
        who = device_id + ("/" + module_id if module_id else "")
        return self.connection_strings[who]

    def sdk_environment(self):
        """Variables that make the official SDKs trust the hub: Python's requests
        (REQUESTS_CA_BUNDLE) and Node (NODE_EXTRA_CA_CERTS)."""
        return {"REQUESTS_CA_BUNDLE": str(self.ca_file), "NODE_EXTRA_CA_CERTS": str(self.ca_file)}

    def refused(self):
        """The console lines about refused connections (so far)."""
        return [line for line in self.console if "refused" in line]

    def wait_refused(self, text, timeout=10.0):
        """The first console line about a refused connection that contains `text`, waiting up to
        `timeout` seconds for it: serve prints a refused connection once it has closed, and its
        console takes events a few times a second."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.refused():
                if text in line:
                    return line
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no refused-connection line with {text!r} in {timeout} s")
            time.sleep(0.05)
