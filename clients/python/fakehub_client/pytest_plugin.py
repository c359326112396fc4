"""The ``fakehub`` pytest fixture: a ``fakehub serve`` per test, stopped after it.

    def test_reconnects(fakehub):
        cs = fakehub.connection_string("sensor-1")        # give this to the device
        ...
        fakehub.control.fault("reset", devices=["sensor-1"])
        assert fakehub.control.expect({"recovers": {"device": "sensor-1", "within": "60s"}})["passed"]

Devices and other serve settings come from a marker::

    @pytest.mark.fakehub(devices=["a", "b"], token_grace="0s")

``fakehub_factory`` starts more hubs (``fakehub_factory(devices=[...])``). The binary is
``$FAKEHUB_BIN`` or ``fakehub`` on the PATH.
"""

import pytest

from .hub import FakeHub


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "fakehub(devices=..., **config): settings of the test's fakehub serve")


@pytest.fixture
def fakehub_factory(tmp_path):
    hubs = []

    def start(**kwargs):
        kwargs.setdefault("out_dir", tmp_path / "hub{}".format(len(hubs)) / "out")
        hub = FakeHub(**kwargs)
        hubs.append(hub)
        return hub

    yield start
    for hub in hubs:
        hub.stop()


@pytest.fixture
def fakehub(request, fakehub_factory):
    marker = request.node.get_closest_marker("fakehub")
    kwargs = dict(marker.kwargs) if marker else {}
    return fakehub_factory(**kwargs)
