"""Drive a fakehub hub from a Python test suite.

* :class:`FakeHub` starts ``fakehub serve`` on a loopback address of its own, waits until it
  listens, and hands out the device connection strings, the service connection string (for the
  official service SDK, ``azure-iot-hub``), the CA file, and a :class:`ControlClient`.
* :class:`ControlClient` speaks the control API: timeline steps (faults, ``advance``, C2D, desired
  patches, methods), expectations, events and records, in the scenario's own words.
* The pytest plugin (``fakehub_client.pytest_plugin``, registered on install) gives the
  ``fakehub`` fixture.

Only the standard library is used (urllib, ssl).
"""

from .control import ControlClient, ControlError, service_token
from .hub import FakeHub, FakeHubError, free_loopback_ip

__all__ = [
    "ControlClient",
    "ControlError",
    "FakeHub",
    "FakeHubError",
    "free_loopback_ip",
    "service_token",
]
