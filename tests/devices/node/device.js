#!/usr/bin/env node
// A device application on the official Azure IoT Node SDK (azure-iot-device 1.18.4 +
// azure-iot-device-mqtt 1.16.4), run by fakehub's tests as a process device.
//
// Default: Client.fromConnectionString with the SDK's own token renewal and retry policy.
// --fixed-token (or device-fixed-token.js): a SAS token minted here once, with a fixed lifetime;
// the SDK cannot renew it, so the hub drops the device at expiry + grace (the bug to catch).
//
// The SDK's retry policy reconnects after most drops; when it gives up (the client's `disconnect`
// event), the app opens the client again, and keeps trying every 10 s if that fails.
// Telemetry goes out in order, one message at a time, while connected: the SDK starts a retry
// loop of its own (with its own reconnects) for every operation sent while offline, so a device
// that keeps sending during an outage reconnects in parallel bursts. --send-while-offline sends
// every message when it is due, connected or not (as the SDK's samples do), to show that.
// One line per event on stdout: "<ISO time> <event> [details]". Keys and tokens are never printed.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const { Client, Message, SharedAccessSignatureAuthenticationProvider } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');

function log(event, details) {
  process.stdout.write(`${new Date().toISOString()} ${event}${details ? ' ' + details : ''}\n`);
}

function fail(message) {
  process.stderr.write(`device.js: ${message}\n`);
  process.exit(2);
}

function envSeconds(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value <= 0) fail(`${name} must be a positive number of seconds`);
  return value;
}

// "HostName=…;DeviceId=…;SharedAccessKey=…;GatewayHostName=…" → { HostName: …, … }
function parseConnectionString(cs) {
  const fields = {};
  for (const part of cs.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0) fields[part.slice(0, eq)] = part.slice(eq + 1);
  }
  for (const need of ['HostName', 'DeviceId', 'SharedAccessKey']) {
    if (!fields[need]) fail(`FAKEHUB_CONNECTION_STRING has no ${need}`);
  }
  return fields;
}

// A device SAS token: sr = url-encoded "{HostName}/devices/{id}", signed with the decoded key.
function mintSas(host, deviceId, keyBase64, expiry) {
  const sr = encodeURIComponent(`${host}/devices/${deviceId}`);
  const sig = crypto.createHmac('sha256', Buffer.from(keyBase64, 'base64'))
    .update(`${sr}\n${expiry}`).digest('base64');
  return `SharedAccessSignature sr=${sr}&sig=${encodeURIComponent(sig)}&se=${expiry}`;
}

function errorText(err) {
  if (!err) return 'none';
  const inner = err.transportError || err.innerError;
  const name = err.name || err.constructor.name;
  const text = `${name}: ${err.message || ''}`.replace(/\s+/g, ' ').trim();
  return JSON.stringify(inner && inner.message ? `${text} (${inner.message})` : text);
}

const fixedToken = process.argv.includes('--fixed-token');
const sendWhileOffline = process.argv.includes('--send-while-offline');
const connectionString = process.env.FAKEHUB_CONNECTION_STRING;
if (!connectionString) fail('FAKEHUB_CONNECTION_STRING is not set');
const caFile = process.env.FAKEHUB_CA_FILE;
if (!caFile) fail('FAKEHUB_CA_FILE is not set');
let caPem;
try {
  caPem = fs.readFileSync(caFile, 'utf8');
} catch (e) {
  fail(`cannot read FAKEHUB_CA_FILE ${caFile}: ${e.code || e.message}`);
}
if (!caPem.includes('BEGIN CERTIFICATE')) fail(`FAKEHUB_CA_FILE ${caFile} holds no PEM certificate`);

const cs = parseConnectionString(connectionString);
const telemetrySecs = envSeconds('FAKEHUB_TELEMETRY_SECS', 60);
const tokenTtl = Math.round(envSeconds('FAKEHUB_TOKEN_TTL_SECS', 3600));
const tokenMargin = Math.round(envSeconds('FAKEHUB_TOKEN_MARGIN_SECS', 900));
const keepAlive = process.env.FAKEHUB_KEEPALIVE_SECS ? Math.round(envSeconds('FAKEHUB_KEEPALIVE_SECS', 180)) : undefined;
if (!fixedToken && tokenMargin >= tokenTtl) fail('FAKEHUB_TOKEN_MARGIN_SECS must be less than FAKEHUB_TOKEN_TTL_SECS');

// The SDK's own MQTT transport, with the transport-level events logged (the client reports a
// drop only once its retry policy has given up).
class LoggedMqtt extends Mqtt {
  constructor(authenticationProvider) {
    super(authenticationProvider);
    this.on('disconnect', (err) => {
      online = false;
      log('disconnected', `reason=${errorText(err)}`);
    });
    authenticationProvider.on('newTokenAvailable', () => {
      const se = Math.floor(Date.now() / 1000) + tokenTtl;
      log('renewing token', `expiry=${new Date(se * 1000).toISOString()} (the SDK reconnects inside its transport: no connect/disconnect events)`);
    });
  }
}

let client;
if (fixedToken) {
  const expiry = Math.floor(Date.now() / 1000) + tokenTtl;
  const sas = mintSas(cs.HostName, cs.DeviceId, cs.SharedAccessKey, expiry);
  if (cs.GatewayHostName) {
    // Client.fromSharedAccessSignature(sas, Mqtt) takes the host from the token's `sr` and has no
    // way to name a gateway, so build the same SDK provider with the gateway host added.
    const provider = new SharedAccessSignatureAuthenticationProvider({
      host: cs.HostName, deviceId: cs.DeviceId, gatewayHostName: cs.GatewayHostName,
      sharedAccessSignature: sas,
    });
    client = Client.fromAuthenticationProvider(provider, LoggedMqtt);
  } else {
    client = Client.fromSharedAccessSignature(sas, LoggedMqtt);
  }
  log('start', `sdk=node azure-iot-device@1.18.4 device=${cs.DeviceId} host=${cs.HostName} gateway=${cs.GatewayHostName || '-'} auth=fixed-token expiry=${new Date(expiry * 1000).toISOString()}`);
} else {
  client = Client.fromConnectionString(connectionString, LoggedMqtt);
  log('start', `sdk=node azure-iot-device@1.18.4 device=${cs.DeviceId} host=${cs.HostName} gateway=${cs.GatewayHostName || '-'} auth=sdk-renewed ttl=${tokenTtl}s margin=${tokenMargin}s`);
}

const options = { ca: caPem };
if (!fixedToken) options.tokenRenewal = { tokenValidTimeInSeconds: tokenTtl, tokenRenewalMarginInSeconds: tokenMargin };
if (keepAlive) options.keepalive = keepAlive;

let telemetryTimer = null;
let stopping = false;
let online = false;
let opening = false;
let subscribed = false;

client.on('connect', () => {
  online = true;
  log('connected');
  pump();
});
// The client reports a drop only when its retry policy will not reconnect: the error is not
// retryable (UnauthorizedError, or a raw socket error such as ECONNRESET) or retries ran out
// (240 s). The SDK would reconnect at the next send; like Microsoft's samples, open again now.
client.on('disconnect', (result) => {
  const err = result && result.transportObj !== undefined ? result.transportObj : result;
  log('sdk gave up', `reason=${errorText(err)} app_reopen=now`);
  open();
});
client.on('error', (err) => log('error', `reason=${errorText(err)}`));

function onC2d(msg) {
  const props = msg.properties.propertyList.map((p) => `${p.key}=${p.value}`).join('&');
  log('c2d', `id=${msg.messageId || '-'} props=${JSON.stringify(props)} body=${JSON.stringify(msg.data.toString())}`);
  client.complete(msg, () => {});
}

function onEcho(request, response) {
  log('method', `name=echo rid=${request.requestId} status=200 payload=${JSON.stringify(request.payload).slice(0, 200)}`);
  response.send(200, request.payload, (e) => {
    if (e) log('method response failed', `rid=${request.requestId} reason=${errorText(e)}`);
  });
}

let seq = 0;
const outbox = [];
let inFlight = false;

function telemetry(n) {
  const message = new Message(JSON.stringify({ seq: n }));
  message.messageId = `seq-${n}`;
  message.properties.add('seq', String(n));
  message.contentType = 'application/json';
  message.contentEncoding = 'utf-8';
  return message;
}

function sendTelemetry() {
  seq += 1;
  if (sendWhileOffline) {
    const n = seq;
    log('sent', `seq-${n}`);
    client.sendEvent(telemetry(n), (err) => {
      if (err) log('send failed', `seq-${n} reason=${errorText(err)}`);
      else log('acked', `seq-${n}`);
    });
    return;
  }
  outbox.push(seq);
  pump();
}

// Send the oldest waiting message, if connected and none is in flight.
function pump() {
  if (sendWhileOffline || stopping || !online || inFlight || outbox.length === 0) return;
  const n = outbox[0];
  inFlight = true;
  log('sent', `seq-${n}`);
  client.sendEvent(telemetry(n), (err) => {
    inFlight = false;
    if (err) {
      log('send failed', `seq-${n} reason=${errorText(err)} retry=when-connected`);
      return;
    }
    outbox.shift();
    log('acked', `seq-${n}`);
    pump();
  });
}

// client.open() uses the SDK's retry policy, but the SDK does not retry a failed first
// connection or a non-retryable error at all; a device must keep trying (every 10 s here).
function open() {
  if (stopping || opening) return;
  opening = true;
  client.open((err) => {
    opening = false;
    if (stopping) return;
    if (err) {
      log('connect failed', `reason=${errorText(err)} next_try_in=10s`);
      setTimeout(open, 10000);
      return;
    }
    if (!subscribed) {
      subscribed = true;
      // Adding these listeners makes the SDK subscribe; it re-subscribes after a retried drop.
      client.on('message', onC2d);
      client.onDeviceMethod('echo', onEcho);
    }
    if (!telemetryTimer) {
      sendTelemetry();
      telemetryTimer = setInterval(sendTelemetry, telemetrySecs * 1000);
    }
  });
}

function start() {
  client.setOptions(options, (err) => {
    if (err) fail(`setOptions: ${err.message}`);
    open();
  });
}

function stop(signal) {
  if (stopping) return;
  stopping = true;
  log('stopping', `signal=${signal}`);
  if (telemetryTimer) clearInterval(telemetryTimer);
  const watchdog = setTimeout(() => {
    log('stopped', 'disconnect=timed-out');
    process.exit(0);
  }, 10000);
  client.close((err) => {
    clearTimeout(watchdog);
    log('stopped', err ? `disconnect=failed reason=${errorText(err)}` : 'disconnect=sent');
    process.exit(0);
  });
}

process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
start();
