"""Faults, time and verdicts over the control API, with plain HTTP, on devices of the official
Python device SDK: a good one (reconnects) and a broken one (automatic reconnection off)."""

from datetime import datetime

import pytest

from sdk_devices import SdkDevice


def ms(stamp):
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000


@pytest.mark.fakehub(devices=["good", "broken"])
def test_reset_advance_and_verdicts_for_a_good_and_a_broken_device(fakehub, devices):
    control = fakehub.control
    # Day-long tokens: the 65-minute jump below must not expire the tokens these real-time devices
    # made (a device on real time sees the hub's clock jump).
    good = SdkDevice(fakehub, "good", sastoken_ttl=86400)
    broken = SdkDevice(fakehub, "broken", retry=False, sastoken_ttl=86400)
    devices.extend([good, broken])
    good.connect()
    broken.connect()
    good.send(message_id="before")

    since = control.events()[1]
    reply = control.timeline({"fault": {"type": "reset", "devices": ["good", "broken"]}})
    assert reply["applied"]["fault"]["name"] == "reset"
    assert reply["applied"]["fault"]["active"] is False, "a reset is over once done"
    control.wait_for_event(
        lambda e: e["event"] == "connack" and e.get("device") == "good" and e["code"] == 0,
        timeout=30, since=since)
    good.send(message_id="after")

    before = control.clock()
    after = control.advance("65m")
    assert ms(after["now"]) - ms(before["now"]) >= 65 * 60 * 1000

    recovered = control.expect({"recovers": {"device": "good", "within": "60s"}})
    assert recovered["passed"] and recovered["judged"], recovered
    lost = control.expect({"recovers": {"device": "broken", "within": "60s"}})
    assert not lost["passed"] and lost["judged"], lost
    assert lost["excerpt"], "a failure shows the events around it"
    assert "never followed by a successful connect" in lost["summary"]

    assert control.expect({"connected": {"device": "good"}})["passed"]
    assert not control.expect({"connected": {"device": "broken"}})["passed"]
    # Without a device: one verdict per device of the hub.
    both = control.expect({"connected": {}})
    assert [v["device"] for v in both["verdicts"]] == ["broken", "good"]
    assert not both["passed"]

    records = control.records()
    assert any(r["operationName"] == "deviceDisconnect" for r in records)
