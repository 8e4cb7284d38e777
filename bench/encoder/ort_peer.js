#!/usr/bin/env node
// ort_peer.js - the peer of bench_encoder: the same CLIP checkpoint exported to
// ONNX (tools/export_onnx.py) and run by ONNX Runtime's CPU build from npm
// (onnxruntime-node, installed with --ignore-scripts: the binding ships in the
// package, the install script only fetches GPU providers).
//
//   node ort_peer.js --onnx-dir DIR [--threads 2] [--text-threads 1]
//                    [--repeats 7] [--text-repeats 30] [--budget 15]
//
// Measures, after warm-up, the median over repeats (up to --repeats, fewer but
// at least 3 when they would take more than --budget seconds) of:
//   images/s at batch 1 and 16 on --threads intra-op threads (vision.onnx);
//   text latency on --text-threads threads for the query in DIR/export.json,
//   padded to 77 tokens (text77.onnx, as users of ONNX CLIP run it) and with
//   only its real tokens (text_dyn.onnx); wall time, and the process's CPU time
//   (user + system, all threads; one intra-op thread, so no spinning pool),
//   which moves little when other processes compete for the cores.
// Before timing it checks that ONNX Runtime reproduces torch's outputs stored by
// export_onnx.py (cosine >= 0.9999), so a broken export cannot look fast.
// Prints one JSON object to stdout.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const ort = require('onnxruntime-node');

function parseArgs(argv) {
  const a = { onnxDir: null, threads: 2, textThreads: 1, repeats: 7, textRepeats: 30, budget: 15 };
  for (let i = 2; i < argv.length; i++) {
    const k = argv[i], v = argv[i + 1];
    if (k === '--onnx-dir') { a.onnxDir = v; i++; }
    else if (k === '--threads') { a.threads = +v; i++; }
    else if (k === '--text-threads') { a.textThreads = +v; i++; }
    else if (k === '--repeats') { a.repeats = +v; i++; }
    else if (k === '--text-repeats') { a.textRepeats = +v; i++; }
    else if (k === '--budget') { a.budget = +v; i++; }
    else { throw new Error(`unknown argument ${k}`); }
  }
  if (!a.onnxDir) throw new Error('usage: ort_peer.js --onnx-dir DIR [--threads N] [--text-threads N] [--repeats N] [--text-repeats N] [--budget S]');
  return a;
}

function median(xs) {
  const s = [...xs].sort((p, q) => p - q);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function cosine(a, b) {
  let ab = 0, aa = 0, bb = 0;
  for (let i = 0; i < a.length; i++) { ab += a[i] * b[i]; aa += a[i] * a[i]; bb += b[i] * b[i]; }
  return ab / Math.sqrt(aa * bb);
}

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

async function openSession(file, threads) {
  return ort.InferenceSession.create(file, {
    executionProviders: ['cpu'],
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
  });
}

function idsTensor(ids, len) {
  const data = new BigInt64Array(len); // zeros after the end token: OpenAI CLIP's padding
  ids.forEach((t, i) => { data[i] = BigInt(t); });
  return new ort.Tensor('int64', data, [1, len]);
}

async function main() {
  const args = parseArgs(process.argv);
  const meta = JSON.parse(fs.readFileSync(path.join(args.onnxDir, 'export.json'), 'utf8'));
  const check = meta.check;
  const imgLen = check.pixels_shape[1] * check.pixels_shape[2] * check.pixels_shape[3];
  const ctx = meta.context_length;

  const vision = await openSession(path.join(args.onnxDir, 'vision.onnx'), args.threads);
  const text77 = await openSession(path.join(args.onnxDir, 'text77.onnx'), args.textThreads);
  const textDyn = await openSession(path.join(args.onnxDir, 'text_dyn.onnx'), args.textThreads);

  // --- correctness against torch --------------------------------------------
  const buf = fs.readFileSync(path.join(args.onnxDir, check.pixels));
  const checkPixels = new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
  const vOut = await vision.run({ pixel_values: new ort.Tensor('float32', checkPixels, check.pixels_shape) });
  const emb = vOut.image_embeds.data;
  const d = meta.projection_dim;
  const verify = { image: Math.min(...check.image_embeds.map((ref, i) => cosine(emb.subarray(i * d, (i + 1) * d), ref))) };
  verify.text77 = cosine((await text77.run({ input_ids: idsTensor(check.ids, ctx) })).text_embeds.data, check.text_embed);
  verify.text_dyn = cosine((await textDyn.run({ input_ids: idsTensor(check.ids, check.ids.length) })).text_embeds.data, check.text_embed);
  for (const [k, v] of Object.entries(verify)) {
    if (!(v >= 0.9999)) throw new Error(`ONNX Runtime disagrees with torch on ${k}: cosine ${v}`);
  }

  // --- images/s --------------------------------------------------------------
  // Pixel values do not change the work; a fixed pseudo-random fill avoids
  // all-zero special cases.
  const images = {};
  for (const batch of [1, 16]) {
    const px = new Float32Array(batch * imgLen);
    let x = 12345;
    for (let i = 0; i < px.length; i++) { x = (x * 1103515245 + 12345) >>> 0; px[i] = (x / 4294967296) * 4 - 2; }
    const feeds = { pixel_values: new ort.Tensor('float32', px, [batch, check.pixels_shape[1], check.pixels_shape[2], check.pixels_shape[3]]) };
    // Sized from the warm-up as bench_encoder does: a repeat lasts >= ~0.3 s,
    // a measurement about --budget seconds, 3 to --repeats repeats.
    await vision.run(feeds);
    const tw = nowMs();
    await vision.run(feeds);
    const runS = (nowMs() - tw) / 1000;
    const runsPerRepeat = batch === 1 ? Math.max(1, Math.ceil(0.3 / runS)) : 1;
    const repeats = Math.min(args.repeats, Math.max(3, Math.floor(args.budget / (runsPerRepeat * runS))));
    const rates = [];
    for (let r = 0; r < repeats; r++) {
      const t0 = nowMs();
      for (let k = 0; k < runsPerRepeat; k++) await vision.run(feeds);
      rates.push((runsPerRepeat * batch) / ((nowMs() - t0) / 1000));
    }
    images[`batch${batch}`] = { images_per_s: median(rates), min: Math.min(...rates), max: Math.max(...rates),
      repeats: rates.length, images_per_repeat: runsPerRepeat * batch };
  }

  // --- text latency ------------------------------------------------------------
  const text = {};
  for (const [name, sess, len] of [['padded77', text77, ctx], ['real_tokens', textDyn, check.ids.length]]) {
    const feeds = { input_ids: idsTensor(check.ids, len) };
    const tw = nowMs();
    for (let w = 0; w < 3; w++) await sess.run(feeds);
    const repeats = Math.min(args.textRepeats, Math.max(5, Math.floor(args.budget / ((nowMs() - tw) / 3000))));
    const ms = [], cpuMs = [];
    for (let r = 0; r < repeats; r++) {
      const t0 = nowMs(), c0 = process.cpuUsage();
      await sess.run(feeds);
      ms.push(nowMs() - t0);
      const c = process.cpuUsage(c0);
      cpuMs.push((c.user + c.system) / 1000);
    }
    text[name] = { ms: median(ms), min: Math.min(...ms), max: Math.max(...ms), repeats: ms.length, tokens: len,
      cpu_ms: median(cpuMs) };
  }

  const out = {
    peer: 'onnxruntime-node',
    version: ort.env.versions ? ort.env.versions.node : require('onnxruntime-node/package.json').version,
    onnx_dir: path.resolve(args.onnxDir),
    threads: args.threads,
    text_threads: args.textThreads,
    cpu: os.cpus()[0].model,
    loadavg_1m: os.loadavg()[0],
    verify_cosine: verify,
    images,
    text,
    query_ids: check.ids,
  };
  process.stdout.write(JSON.stringify(out, null, 2) + '\n');
  await Promise.all([vision.release(), text77.release(), textDyn.release()]);
}

main().catch((e) => { process.stderr.write(`ort_peer: ${e.message}\n`); process.exit(1); });
