// Node probe for the fakehub time preload. Usage: node timers.js timeout45 | clocks | idle SECONDS
'use strict';
const { performance } = require('node:perf_hooks');

const t0 = performance.now();
const d0 = Date.now();
const h0 = process.hrtime.bigint();
const ms = (x) => Math.round(x * 1e6); // ms -> ns
const event = (name, fields) => {
  const parts = Object.entries(fields).map(([k, v]) => `${k}=${v}`);
  process.stdout.write(`EVENT ${name} ${parts.join(' ')}\n`);
};

const mode = process.argv[2];
if (mode === 'timeout45') {
  // A 45 min timeout alongside a 60 s interval: both on libuv's timer heap, waited for in epoll_pwait.
  let ticks = 0;
  const iv = setInterval(() => { ticks += 1; }, 60_000);
  setTimeout(() => {
    const elapsed = performance.now() - t0;
    event('timeout45', {
      elapsed_ns: ms(elapsed),
      expected_ns: ms(45 * 60_000),
      date_elapsed_ns: ms(Date.now() - d0),
      hrtime_elapsed_ns: (process.hrtime.bigint() - h0).toString(),
      ticks,
      ok: ticks >= 44 && ticks <= 45 ? 1 : 0,
    });
    clearInterval(iv);
  }, 45 * 60_000);
} else if (mode === 'clocks') {
  event('clocks', { date_now_ms: Date.now(), hrtime_ns: process.hrtime.bigint().toString(), ok: 1 });
} else if (mode === 'idle') {
  // An idle device: a 60 s interval (a keep-alive or telemetry timer) for SECONDS of virtual time.
  const seconds = Number(process.argv[3]);
  let prev = performance.now();
  let maxLate = 0;
  let sumLate = 0;
  let n = 0;
  const iv = setInterval(() => {
    const now = performance.now();
    const late = now - prev - 60_000;
    prev = now;
    maxLate = Math.max(maxLate, late);
    sumLate += late;
    n += 1;
    if (now - t0 >= seconds * 1000) {
      clearInterval(iv);
      event('idle', {
        elapsed_ns: ms(now - t0),
        ticks: n,
        max_late_ns: ms(maxLate),
        mean_late_ns: ms(n ? sumLate / n : 0),
        ok: 1,
      });
    }
  }, 60_000);
} else {
  process.stderr.write('usage: node timers.js timeout45 | clocks | idle SECONDS\n');
  process.exit(2);
}
