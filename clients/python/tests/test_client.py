"""The Python client and the control API, with plain HTTP (urllib)."""

import json
import urllib.error
import urllib.request
import ssl

import pytest

from fakehub_client import ControlError, FakeHub, FakeHubError


def test_the_fixture_hands_out_what_a_test_needs(fakehub):
    assert fakehub.connection_string("sensor-1").startswith(
        "HostName={};DeviceId=sensor-1;SharedAccessKey=".format(fakehub.host_name))
    assert "GatewayHostName={}".format(fakehub.ip) in fakehub.connection_string("sensor-1")
    assert fakehub.service_connection_string.startswith(
        "HostName={};SharedAccessKeyName=iothubowner;SharedAccessKey=".format(fakehub.host_name))
    assert fakehub.ca_file.read_text().startswith("-----BEGIN CERTIFICATE-----")
    mode = (fakehub.out_dir / "service-connection-string.txt").stat().st_mode & 0o777
    assert mode == 0o600
    clock = fakehub.control.clock()
    assert clock["now"].endswith("Z") and clock["elapsed_ms"] >= 0


def test_the_openapi_document_is_generated_from_the_types(fakehub):
    doc = fakehub.control.openapi()
    assert doc["openapi"].startswith("3.1")
    assert "/fakehub/timeline" in doc["paths"]
    text = json.dumps(doc)
    for word in ("renews_token", "advance", "mass_drop", "desired"):
        assert word in text, word


def test_bad_requests_get_400_with_the_field(fakehub):
    with pytest.raises(ControlError) as e:
        fakehub.control.timeline({"fault": {"type": "resett"}})
    assert e.value.status == 400 and e.value.field == "fault"
    assert "expected one of" in e.value.message and "`reset`" in e.value.message
    with pytest.raises(ControlError) as e:
        fakehub.control.timeline({"c2d": {"device": "nobody", "body": "x"}})
    assert e.value.status == 400 and e.value.field == "c2d.device"
    with pytest.raises(ControlError) as e:
        fakehub.control.expect({"recovers": {"device": "sensor-1", "within": "soon"}})
    assert e.value.status == 400 and e.value.field == "recovers.within"
    with pytest.raises(ControlError) as e:
        fakehub.control.end_fault(12345)
    assert e.value.status == 404
    # The hub is still there.
    assert fakehub.control.faults() == []


def test_without_a_token_the_control_api_answers_401(fakehub):
    context = ssl.create_default_context(cafile=str(fakehub.ca_file))
    request = urllib.request.Request(fakehub.service_url + "/fakehub/clock")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, context=context, timeout=10)
    assert e.value.code == 401


def test_steps_faults_and_the_event_log(fakehub):
    control = fakehub.control
    queued = control.c2d("sensor-1", "hello", message_id="c2d-1")
    assert queued == {"c2d": {"message_id": "c2d-1"}}
    fault = control.fault("outage", mode="refuse_tcp", duration="10m")
    assert [f["id"] for f in control.faults()] == [fault]
    events, since = control.events()
    kinds = [e["event"] for e in events]
    assert "c2d_queued" in kinds and "fault" in kinds
    assert since == events[-1]["seq"] + 1
    # The outage ends inside a jump of the clock, at its own instant.
    before = control.clock()
    after = control.advance("11m")
    assert control.faults() == []
    ended = control.wait_for_event(
        lambda e: e["event"] == "fault" and e["action"] == "ended", since=since)
    assert ended["time"] < after["now"]
    assert before["now"] < ended["time"]
    # A lasting fault ends on request.
    fault = control.fault("latency", inbound="1s")
    control.end_fault(fault)
    assert control.faults() == []
    # Nothing new: a long poll returns empty after its wait.
    events, since2 = control.events(since=10**6, wait="200ms")
    assert events == [] and since2 == 10**6


def test_a_second_hub_on_the_same_out_does_not_start(fakehub):
    with pytest.raises(FakeHubError) as e:
        FakeHub(out_dir=fakehub.out_dir, service_port=fakehub.service_port)
    assert "another hub is using the output directory" in str(e.value)
    assert fakehub.control.clock()
