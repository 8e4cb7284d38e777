// The screenshots of docs/ (README, docs/http.md): the page at a desktop
// width (region mode) and at a phone's (heatmap mode), and the photo view,
// against the synthetic world (harness.js), written as palette PNGs.
//
//   tests/browser/run build/umgdb build/tests/browser screenshots.js docs
'use strict';

const path = require('path');
const { spawnSync } = require('child_process');
const h = require('./harness');

const [UMGDB, OUT] = process.argv.slice(2);

async function shot(page, file) {
  const tmp = path.join(OUT, file + '.full.png');
  await page.screenshot({ path: tmp });
  // 256 colours (PIL): a fifth of the bytes, no visible loss on these pages
  const q = spawnSync('/usr/bin/python3', ['-c',
    'import sys, os; from PIL import Image; im = Image.open(sys.argv[1]).convert("RGB"); ' +
    'im.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(sys.argv[2], optimize=True); os.remove(sys.argv[1])',
    tmp, path.join(OUT, file)], { encoding: 'utf8' });
  if (q.status !== 0) throw new Error('quantize: ' + q.stderr);
  console.log('wrote ' + path.join(OUT, file));
}

async function search(page, text, mode) {
  await page.click(`.modes input[value="${mode}"]`);
  await page.fill('#q', text);
  await page.evaluate(() => { document.getElementById('status').textContent = ''; });
  await page.press('#q', 'Enter');
  await page.waitForFunction(() => /^Results/.test(document.getElementById('status').textContent));
  await page.waitForFunction(() => Array.from(document.querySelectorAll('#results .stage img')).every((i) => i.complete && i.naturalWidth > 0));
}

(async () => {
  const world = await h.startWorld({ umgdb: UMGDB, xss: false });
  const browser = await h.launch();
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    await page.goto(world.base + '/');
    await page.waitForFunction(() => document.getElementById('server-info').textContent !== '');
    await search(page, 'large blue ring', 'region');
    await page.focus('#results .card'); // the focus ring shows in the picture
    await shot(page, 'web-desktop.png');
    await page.keyboard.press('ArrowRight');
    await page.keyboard.press('ArrowRight'); // a photo with a smooth background: a smaller PNG
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => document.querySelectorAll('#viewer-stage .region').length > 0 &&
      document.getElementById('viewer-img').naturalWidth > 0);
    await shot(page, 'web-photo.png');
    await page.keyboard.press('Escape');
    await page.setViewportSize({ width: 390, height: 844 });
    await search(page, 'large blue ring', 'pixel');
    await shot(page, 'web-phone.png');
  } finally {
    await browser.close();
    await world.stop();
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
