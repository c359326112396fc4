#!/usr/bin/env node
// Provision with the official Azure IoT Node SDK (azure-iot-provisioning-device 1.9.1 +
// azure-iot-provisioning-device-mqtt 1.8.1 + azure-iot-security-symmetric-key 1.8.2) against
// fakehub's Device Provisioning Service, then connect to the assigned hub with azure-iot-device
// 1.18.4 / azure-iot-device-mqtt 1.16.4 and send telemetry — as Microsoft's
// register_symkey.js sample does.
//
// Environment: FAKEHUB_DPS_HOST (host[:port]), FAKEHUB_DPS_ID_SCOPE, FAKEHUB_DPS_REGISTRATION_ID,
// FAKEHUB_DPS_KEY (the device's key) or FAKEHUB_DPS_GROUP_KEY (the enrollment group's: the
// device key is derived here); the CA comes in through NODE_EXTRA_CA_CERTS (the provisioning
// transport has no CA option). FAKEHUB_MESSAGES (default 2) telemetry messages are sent.
//
// One JSON line per step on stdout (`registered`, `connected`, `sent`, `done`); exit 0 when all
// worked, 1 when the SDK failed, 2 for a setup error. Keys are never printed.
'use strict';

const crypto = require('crypto');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Mqtt: ProvisioningMqtt } = require('azure-iot-provisioning-device-mqtt');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
const { Client, Message } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');

function emit(step, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ step }, fields || {})) + '\n');
}

function env(name) {
  const value = process.env[name];
  if (!value) {
    emit('error', { message: `${name} is not set` });
    process.exit(2);
  }
  return value;
}

function errorFields(err) {
  return {
    name: err && (err.name || err.constructor.name),
    message: String(err && err.message).replace(/SharedAccessSignature\s+\S+/g, 'SharedAccessSignature <redacted>'),
  };
}

// The documented derivation: base64(HMAC-SHA256(base64-decoded group key, registration id)).
function deriveDeviceKey(groupKey, registrationId) {
  return crypto.createHmac('sha256', Buffer.from(groupKey, 'base64'))
    .update(registrationId, 'utf8').digest('base64');
}

async function main() {
  const host = env('FAKEHUB_DPS_HOST');
  const scope = env('FAKEHUB_DPS_ID_SCOPE');
  const registrationId = env('FAKEHUB_DPS_REGISTRATION_ID');
  const key = process.env.FAKEHUB_DPS_GROUP_KEY
    ? deriveDeviceKey(process.env.FAKEHUB_DPS_GROUP_KEY, registrationId)
    : env('FAKEHUB_DPS_KEY');
  const messages = Number(process.env.FAKEHUB_MESSAGES || '2');
  emit('start', { registration_id: registrationId });

  const security = new SymmetricKeySecurityClient(registrationId, key);
  const provisioning = ProvisioningDeviceClient.create(host, scope, new ProvisioningMqtt(), security);
  let result;
  try {
    result = await provisioning.register();
  } catch (err) {
    emit('error', Object.assign({ during: 'register' }, errorFields(err)));
    process.exit(1);
  }
  emit('registered', {
    assigned_hub: result.assignedHub,
    device_id: result.deviceId,
    substatus: result.substatus,
    status: result.status,
  });

  const cs = `HostName=${result.assignedHub};DeviceId=${result.deviceId};SharedAccessKey=${key}`;
  const client = Client.fromConnectionString(cs, Mqtt);
  try {
    await client.open();
    emit('connected', { hub: result.assignedHub });
    for (let n = 0; n < messages; n++) {
      const message = new Message(JSON.stringify({ seq: n }));
      message.messageId = `m-${n}`;
      message.properties.add('seq', String(n));
      await client.sendEvent(message);
      emit('sent', { message_id: message.messageId });
    }
    await client.close();
  } catch (err) {
    emit('error', Object.assign({ during: 'hub' }, errorFields(err)));
    process.exit(1);
  }
  emit('done', { exit_code: 0 });
  process.exit(0);
}

setTimeout(() => {
  emit('error', { message: 'deadline of 90 s expired' });
  process.exit(4);
}, 90000).unref();

main();
