#!/usr/bin/env python3
"""The fixed-token variant of device.py: IoTHubDeviceClient.create_from_sastoken with a token minted
once at start (lifetime FAKEHUB_TOKEN_TTL_SECS, default 3600 s). The SDK asks for a new token 120 s
before expiry (on_new_sastoken_required) and this app has none to give, so the hub drops the
device at expiry + grace (401003, then 404104) and refuses it afterwards: the bug to catch."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
if "--fixed-token" not in sys.argv[1:]:
    sys.argv.append("--fixed-token")

import device  # noqa: E402

device.main()
