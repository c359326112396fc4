#!/usr/bin/env node
// Back-end test code as a team writes it with the official Node service SDK (azure-iothub 1.16.6),
// run against `fakehub serve`: read a twin, update its desired properties, invoke a direct method.
//
// Environment: FAKEHUB_SERVICE_CONNECTION_STRING (HostName=<hub address>;SharedAccessKeyName=…;
// SharedAccessKey=…; the SDK always uses port 443 of HostName), NODE_EXTRA_CA_CERTS (the hub's
// ca.pem), FAKEHUB_DEVICE_ID, FAKEHUB_METHOD (a method the device answers).
// Prints one JSON line per step; exit 0 when every call worked, 1 otherwise. Never prints keys.
'use strict';

const { Registry, Client } = require('azure-iothub');

function emit(step, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ step }, fields)) + '\n');
}

async function main() {
  const cs = process.env.FAKEHUB_SERVICE_CONNECTION_STRING;
  const deviceId = process.env.FAKEHUB_DEVICE_ID;
  const method = process.env.FAKEHUB_METHOD || 'ping';
  if (!cs || !deviceId) {
    emit('error', { message: 'set FAKEHUB_SERVICE_CONNECTION_STRING and FAKEHUB_DEVICE_ID' });
    process.exit(2);
  }
  const registry = Registry.fromConnectionString(cs);
  const { responseBody: twin } = await registry.getTwin(deviceId);
  emit('twin', { etag: twin.etag, desired: twin.properties.desired });

  const patch = { properties: { desired: { from_node: 'hello' } } };
  const { responseBody: updated } = await registry.updateTwin(deviceId, patch, twin.etag);
  emit('updated', { etag: updated.etag, desired: updated.properties.desired });

  // A stale ETag is refused (412 → InvalidEtagError).
  try {
    await registry.updateTwin(deviceId, patch, twin.etag);
    emit('stale_accepted', {});
  } catch (e) {
    emit('stale_refused', { name: e.constructor.name, status: e.response && e.response.statusCode });
  }

  const client = Client.fromConnectionString(cs);
  const { result } = await client.invokeDeviceMethod(deviceId, {
    methodName: method,
    payload: { from: 'node' },
    responseTimeoutInSeconds: 15,
  });
  emit('method', { status: result.status, payload: result.payload });

  // An unknown device: DeviceNotFoundError from the legacy error body.
  try {
    await registry.get('no-such-device');
    emit('unknown_found', {});
  } catch (e) {
    emit('unknown_refused', { name: e.constructor.name, status: e.response && e.response.statusCode });
  }
  emit('done', {});
}

main().catch((e) => {
  emit('error', { name: e.constructor.name, message: String(e.message).replace(/SharedAccess\S+/g, '<redacted>') });
  process.exit(1);
});
