#!/usr/bin/env node
// The fixed-token variant of device.js: a SAS token minted once at start (lifetime
// FAKEHUB_TOKEN_TTL_SECS, default 3600 s) that the SDK cannot renew. The hub drops the device at
// expiry + grace (401003, then 404104) and refuses its reconnects: the bug a test must catch.
'use strict';
if (!process.argv.includes('--fixed-token')) process.argv.push('--fixed-token');
require('./device.js');
