// The browser tests' world: synthetic photos (tools/synthworld, docs/synth.md),
// a real `umgdb serve --http` holding them with the small model trained on
// that world (tests/fixtures/synth-umg), and headless Debian chromium.
// Used by test_page.js and screenshots.js.
'use strict';

const { spawn, spawnSync } = require('child_process');
const fs = require('fs');
const net = require('net');
const os = require('os');
const path = require('path');

const ROOT = path.resolve(__dirname, '..', '..');
const MODEL = path.join(ROOT, 'tests', 'fixtures', 'synth-umg');
const CHROMIUM = process.env.UMG_CHROMIUM || '/usr/bin/chromium';
// A name that would run script if the page wrote it as HTML.
const XSS_NAME = '<img src=x onerror=window.__pwned=1>.jpg';
const XSS_TAG = '<b>bold</b>';

// Chromium as root in this sandbox, with no network beyond loopback:
// no sandbox (root), no GPU, and none of the background connections that
// the closed network would refuse (docs/http.md, "The web page").
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-dev-shm-usage', '--font-render-hinting=none'];

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = s.address().port;
      s.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function api(base, token, op, body) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = 'Bearer ' + token;
  const res = await fetch(base + '/v1/' + op, { method: 'POST', headers, body: JSON.stringify(body || {}) });
  const j = await res.json();
  if (!j.ok) throw new Error(op + ': ' + j.error.code + ': ' + j.error.message);
  return j.result;
}

// Starts the world: `count` photos of `seed` in a fresh temporary directory,
// with `xss` the last one renamed XSS_NAME (and tagged XSS_TAG), photo i
// tagged "even" or "odd", all ingested by path; a server with `token` (or none).
// Returns { base, token, photos, annotations (by stored path), ids (by path),
// tags (by id), api(op, body), stop() }.
async function startWorld({ umgdb, seed = 4242, count = 25, token = null, xss = true, log = () => {} }) {
  const tmp = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'umg_browser_')));
  const photos = path.join(tmp, 'photos');
  const t0 = Date.now();
  const gen = spawnSync('/usr/bin/python3', ['-m', 'tools.synthworld.generate', '--seed', String(seed),
    '--count', String(count), photos], { cwd: ROOT, encoding: 'utf8' });
  if (gen.status !== 0) throw new Error('generate.py failed: ' + gen.stderr);
  const ann = JSON.parse(fs.readFileSync(path.join(photos, 'annotations.json'), 'utf8'));
  if (xss) {
    const last = ann.images[ann.images.length - 1];
    fs.renameSync(path.join(photos, last.file), path.join(photos, XSS_NAME));
    last.file = XSS_NAME;
  }
  log(`generated ${count} photos (${Date.now() - t0} ms)`);

  const port = await freePort();
  const args = ['serve', '--data', path.join(tmp, 'data'), '--model', MODEL, '--socket', path.join(tmp, 'sock'),
    // the default decode (fast) shrinks a JPEG only when the result keeps 1.5x the model's input:
    // these ~440 px photos for the 160 px model decode in full, as its training saw them
    // (docs/server.md, "Decode mode")
    '--http', '127.0.0.1:' + port, '--allow-root', photos, '--threads', '2', '--log-level', 'warn'];
  if (token) {
    fs.writeFileSync(path.join(tmp, 'token'), token + '\n', { mode: 0o600 });
    args.push('--auth-token-file', path.join(tmp, 'token'));
  }
  const serverLog = fs.openSync(path.join(tmp, 'server.log'), 'w');
  // the server dies with this process, even when it is killed (a ctest
  // timeout): util-linux's setpriv --pdeathsig, where it is
  const server = fs.existsSync('/usr/bin/setpriv')
    ? spawn('/usr/bin/setpriv', ['--pdeathsig', 'KILL', '--', umgdb, ...args], { stdio: ['ignore', serverLog, serverLog] })
    : spawn(umgdb, args, { stdio: ['ignore', serverLog, serverLog] });
  let exited = null;
  server.on('exit', (code, sig) => { exited = sig || code; });
  process.on('exit', () => { if (exited === null) server.kill('SIGKILL'); });
  const base = 'http://127.0.0.1:' + port;
  const stop = async () => {
    if (exited === null) {
      server.kill('SIGTERM');
      for (let i = 0; i < 200 && exited === null; i++) await sleep(50);
      if (exited === null) server.kill('SIGKILL');
    }
    fs.closeSync(serverLog);
    if (!process.env.UMG_KEEP_TMP) fs.rmSync(tmp, { recursive: true, force: true });
  };
  try {
    for (let i = 0; ; i++) {
      if (exited !== null) throw new Error('server exited (' + exited + '): ' + fs.readFileSync(path.join(tmp, 'server.log'), 'utf8'));
      if (i > 600) throw new Error('server not answering after 60 s');
      try {
        if ((await fetch(base + '/v1/openapi.json')).ok) break;
      } catch (e) { /* not listening yet */ }
      await sleep(100);
    }
    const call = (op, body) => api(base, token, op, body);
    const annotations = {}, ids = {}, tags = {};
    // a few ingests in flight at once: the server batches them for its encoder
    const queue = ann.images.map((im, i) => ({ im, i }));
    const worker = async () => {
      for (let job; (job = queue.shift());) {
        const p = path.join(photos, job.im.file);
        const t = [job.i % 2 ? 'odd' : 'even'];
        if (job.im.file === XSS_NAME) t.push(XSS_TAG);
        const r = await call('ingest', { path: p, tags: t });
        annotations[p] = job.im;
        ids[p] = r.image_id;
        tags[r.image_id] = t;
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    log(`server up and ${count} photos ingested (${Date.now() - t0} ms)`);
    return { base, token, tmp, photos, annotations, ids, tags, api: call, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

// Is chromium here?  In CI it must be: there a missing browser is a failure.
function chromiumMissing() {
  if (fs.existsSync(CHROMIUM)) return null;
  return CHROMIUM + ' is missing (Debian package chromium: scripts/install-deps)';
}

async function launch() {
  const { chromium } = require('playwright-core');
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
}

module.exports = { startWorld, launch, chromiumMissing, XSS_NAME, XSS_TAG, ROOT };
