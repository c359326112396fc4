"""Devices on the official Python device SDK (azure-iot-device 2.14.0), in-process, for the tests."""

import queue

from azure.iot.device import IoTHubDeviceClient, Message, MethodResponse


class SdkDevice:
    """An ``IoTHubDeviceClient`` for one of the hub's devices.

    ``retry``: the SDK's automatic reconnection; ``sastoken_ttl``: how long its tokens last (the
    SDK's default is an hour of real time)."""

    def __init__(self, hub, device_id, connection_string=None, retry=True, sastoken_ttl=3600):
        cs = connection_string or hub.connection_string(device_id)
        self.device_id = device_id
        self.client = IoTHubDeviceClient.create_from_connection_string(
            cs,
            server_verification_cert=hub.ca_file.read_text(),
            connection_retry=retry,
            connection_retry_interval=1,
            sastoken_ttl=sastoken_ttl,
            keep_alive=60,
        )
        self.desired = queue.Queue()
        self.methods = queue.Queue()

    def connect(self):
        self.client.connect()
        return self

    def answer_methods(self, status=200):
        """Answer every direct method with ``status`` and ``{"echo": <payload>}``."""

        def handler(request):
            self.methods.put((request.name, request.payload))
            response = MethodResponse.create_from_method_request(
                request, status, {"echo": request.payload})
            self.client.send_method_response(response)

        self.client.on_method_request_received = handler
        return self

    def watch_desired(self):
        self.client.on_twin_desired_properties_patch_received = self.desired.put
        return self

    def send(self, text="hello", message_id="m-0"):
        message = Message(text)
        message.message_id = message_id
        self.client.send_message(message)

    def shutdown(self):
        try:
            self.client.shutdown()
        except Exception:  # noqa: BLE001 - a test's cleanup must not mask its verdict
            pass
