#!/usr/bin/env python3
"""Provision with the official Azure IoT Python SDK (azure-iot-device 2.14.0) against fakehub's
Device Provisioning Service, then connect to the assigned hub and send telemetry: what a device
that starts without a connection string does, as Microsoft's samples
(provision_symmetric_key.py, provision_symmetric_key_group.py, provision_x509.py) do it.

Usage:  python3 dps_client.py [--messages N] [--x509]

Environment:
    FAKEHUB_DPS_HOST             the provisioning host (the SDK always uses port 8883)
    FAKEHUB_DPS_ID_SCOPE         the ID scope
    FAKEHUB_DPS_REGISTRATION_ID  the registration id
    FAKEHUB_DPS_KEY              the device's key (individual enrollment), or
    FAKEHUB_DPS_GROUP_KEY        the enrollment group's key: the device key is derived from it
                                 here, as the group sample does
    FAKEHUB_CERT_FILE, FAKEHUB_KEY_FILE   with --x509: the device certificate and key
    FAKEHUB_CA_FILE              the CA to trust (for DPS and the hub alike)
    FAKEHUB_DPS_PAYLOAD          optional JSON: the registration's provisioning_payload (e.g. an
                                 in-band fault trigger)

One JSON line per step on stdout (`registered` with the registration result, `connected`,
`sent`, `done`); exit 0 when provisioning, connecting and sending all worked. Keys never appear
in the output.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sdk_client  # noqa: E402  (the shared output, redaction and timeout helpers)
from sdk_client import (  # noqa: E402
    EXIT_FAILED, EXIT_TIMEOUT, EXIT_USAGE, CallTimeout, call_with_timeout,
    describe_exception, emit, fail, finish, start_watchdog)


def derive_device_key(group_key, registration_id):
    """The documented derivation: base64(HMAC-SHA256(base64decode(group key), registration id))."""
    digest = hmac.HMAC(base64.b64decode(group_key), registration_id.encode("utf-8"),
                       hashlib.sha256).digest()
    return base64.b64encode(digest).decode("utf-8")


def env(name):
    value = os.environ.get(name)
    if not value:
        fail(EXIT_USAGE, type="ConfigError", message="{} is not set".format(name))
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2)
    parser.add_argument("--x509", action="store_true")
    parser.add_argument("--deadline", type=float, default=90.0)
    args = parser.parse_args()
    start_watchdog(args.deadline)
    try:
        from azure.iot.device import IoTHubDeviceClient, Message, ProvisioningDeviceClient, X509
        from azure.iot.device.constant import VERSION
    except ImportError as exc:
        fail(EXIT_USAGE, type="ImportError", message=str(exc))

    host = env("FAKEHUB_DPS_HOST")
    scope = env("FAKEHUB_DPS_ID_SCOPE")
    registration_id = env("FAKEHUB_DPS_REGISTRATION_ID")
    with open(env("FAKEHUB_CA_FILE"), "r", encoding="ascii") as handle:
        ca = handle.read()
    key = None
    x509 = None
    if args.x509:
        x509 = X509(cert_file=env("FAKEHUB_CERT_FILE"), key_file=env("FAKEHUB_KEY_FILE"))
    elif os.environ.get("FAKEHUB_DPS_GROUP_KEY"):
        group_key = os.environ["FAKEHUB_DPS_GROUP_KEY"]
        sdk_client._secrets.append(group_key)
        key = derive_device_key(group_key, registration_id)
    else:
        key = env("FAKEHUB_DPS_KEY")
    if key:
        sdk_client._secrets.append(key)
    emit("start", sdk_version=VERSION, registration_id=registration_id, x509=args.x509)

    try:
        if x509:
            provisioning = ProvisioningDeviceClient.create_from_x509_certificate(
                provisioning_host=host, registration_id=registration_id, id_scope=scope,
                x509=x509, server_verification_cert=ca)
        else:
            provisioning = ProvisioningDeviceClient.create_from_symmetric_key(
                provisioning_host=host, registration_id=registration_id, id_scope=scope,
                symmetric_key=key, server_verification_cert=ca)
        if os.environ.get("FAKEHUB_DPS_PAYLOAD"):
            provisioning.provisioning_payload = json.loads(os.environ["FAKEHUB_DPS_PAYLOAD"])
        result = call_with_timeout(60, provisioning.register)
    except CallTimeout as exc:
        fail(EXIT_TIMEOUT, type="Timeout", during="register", message=str(exc))
    except Exception as exc:  # noqa: B902 - any SDK error is the outcome to report
        fail(EXIT_FAILED, during="register", **describe_exception(exc))
    state = result.registration_state
    emit("registered", status=result.status, operation_id=result.operation_id,
         assigned_hub=state.assigned_hub, device_id=state.device_id, substatus=state.sub_status)
    if result.status != "assigned":
        fail(EXIT_FAILED, during="register", message="status {}".format(result.status))

    try:
        if x509:
            client = IoTHubDeviceClient.create_from_x509_certificate(
                x509=x509, hostname=state.assigned_hub, device_id=state.device_id,
                server_verification_cert=ca)
        else:
            client = IoTHubDeviceClient.create_from_symmetric_key(
                symmetric_key=key, hostname=state.assigned_hub, device_id=state.device_id,
                server_verification_cert=ca)
        call_with_timeout(30, client.connect)
        emit("connected", hub=state.assigned_hub)
        for n in range(args.messages):
            message = Message('{"seq": %d}' % n)
            message.message_id = "m-{}".format(n)
            message.custom_properties["seq"] = str(n)
            call_with_timeout(30, client.send_message, message)
            emit("sent", message_id=message.message_id)
        call_with_timeout(30, client.shutdown)
    except CallTimeout as exc:
        fail(EXIT_TIMEOUT, type="Timeout", during="hub", message=str(exc))
    except Exception as exc:  # noqa: B902
        fail(EXIT_FAILED, during="hub", **describe_exception(exc))
    finish(0)


if __name__ == "__main__":
    main()
