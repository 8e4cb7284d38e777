// ctest test_browser: the search page (web/) in headless Debian chromium,
// driven by playwright-core, against a real `umgdb serve --http` holding the
// synthetic world's photos (harness.js).  Run by tests/browser/run, which
// installs playwright-core (npm ci) and decides whether a missing chromium is
// a skip (outside CI) or a failure (in CI).
//
//   node tests/browser/test_page.js build/umgdb
'use strict';

const assert = require('node:assert/strict');
const path = require('path');
const h = require('./harness');

const UMGDB = process.argv[2];
const TOKEN = 'browser-test-token-0123456789';
const QUERY = 'large blue ring';
const t0 = Date.now();
const log = (msg) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)} s] ${msg}`);

// Rectangles of the shown cards, in CSS pixels of the page.
function readCards(page) {
  return page.$$eval('#results .card', (cards) => cards.map((c) => {
    const r = (e) => {
      if (!e) return null;
      const b = e.getBoundingClientRect();
      return { x: b.x, y: b.y, w: b.width, h: b.height };
    };
    const heat = c.querySelector('canvas.heat');
    return {
      index: +c.dataset.index,
      id: +c.dataset.imageId,
      name: c.querySelector('.name').textContent,
      score: c.querySelector('.score').textContent,
      img: r(c.querySelector('.stage img')),
      stage: r(c.querySelector('.stage')),
      box: r(c.querySelector('.box')),
      heat: r(heat),
      heatGrid: heat ? [heat.width, heat.height] : null,
    };
  }));
}

// The bodies of the searches the page sent, in order (searched() appends).
const sent = [];

// Runs `action` (which starts a search) and waits for its answer to be shown;
// the status line.
async function searched(page, action) {
  await page.evaluate(() => { document.getElementById('status').textContent = ''; });
  const request = page.waitForRequest((r) => r.method() === 'POST' && /\/v1\/query(_image)?$/.test(r.url()));
  await action();
  await page.waitForFunction(() => {
    const s = document.getElementById('status').textContent;
    return s !== '' && !s.startsWith('Searching') && !document.body.classList.contains('busy');
  });
  sent.push(JSON.parse((await request).postData()));
  return (await page.textContent('#status')).trim();
}

// Every thumbnail of the grid decoded (or the test fails on a timeout).
async function thumbsLoaded(page) {
  await page.waitForFunction(() => Array.from(document.querySelectorAll('#results .stage')).every((s) => {
    const img = s.querySelector('img');
    return !s.classList.contains('loading') && img.complete && img.naturalWidth > 0;
  }));
}

// photo rectangle [x, y, w, h] (of a photo width x height) -> where it should
// be drawn over the image element's rectangle r
function scaled(rect, width, height, r) {
  return { x: r.x + rect[0] * r.w / width, y: r.y + rect[1] * r.h / height, w: rect[2] * r.w / width, h: rect[3] * r.h / height };
}

function assertNear(got, want, tol, what) {
  for (const k of ['x', 'y', 'w', 'h'])
    assert.ok(Math.abs(got[k] - want[k]) <= tol,
      `${what}: ${k} is ${got[k].toFixed(2)}, expected ${want[k].toFixed(2)} (got ${JSON.stringify(got)}, want ${JSON.stringify(want)})`);
}

function iou(a, b) {
  const x0 = Math.max(a[0], b[0]), y0 = Math.max(a[1], b[1]);
  const x1 = Math.min(a[0] + a[2], b[0] + b[2]), y1 = Math.min(a[1] + a[3], b[1] + b[3]);
  const inter = Math.max(0, x1 - x0) * Math.max(0, y1 - y0);
  return inter / (a[2] * a[3] + b[2] * b[3] - inter);
}

async function setMode(page, mode) {
  return searched(page, () => page.click(`.modes input[value="${mode}"]`));
}

async function main() {
  const missing = h.chromiumMissing();
  if (missing) throw new Error(missing); // tests/browser/run decides skip or failure before
  const world = await h.startWorld({ umgdb: UMGDB, token: TOKEN, log });
  const browser = await h.launch();
  const problems = []; // console errors and page errors that are not expected
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    page.setDefaultTimeout(20000);
    let tokenGiven = false;
    let refusalAsked = false; // the query the server refuses (400) on purpose
    page.on('pageerror', (e) => problems.push('page error: ' + e.message));
    page.on('console', (m) => {
      if (m.type() !== 'error') return;
      const url = m.location().url || '';
      // the token-less hello before the token is typed is answered 401, as it must
      if (!tokenGiven && /status of 401/.test(m.text()) && url.endsWith('/v1/hello')) return;
      if (refusalAsked && /status of 400/.test(m.text()) && url.endsWith('/v1/query')) return;
      problems.push(`console error: ${m.text()} (${url})`);
    });
    const pictures = []; // [id, "thumb" | "file", status] of every picture fetched
    page.on('response', (r) => {
      const m = /\/v1\/images\/(\d+)\/(thumb|file)$/.exec(r.url());
      if (m) pictures.push([+m[1], m[2], r.status()]);
    });

    // ---- the page and its headers
    const res = await page.goto(world.base + '/');
    assert.equal(res.status(), 200);
    const hdr = res.headers();
    assert.equal(hdr['content-type'], 'text/html; charset=utf-8');
    const csp = hdr['content-security-policy'] || '';
    for (const d of ["default-src 'none'", "script-src 'self'", "style-src 'self'", "require-trusted-types-for 'script'"])
      assert.ok(csp.includes(d), `CSP has ${d}: ${csp}`);
    for (const [p, type] of [['/app.js', 'text/javascript; charset=utf-8'], ['/style.css', 'text/css; charset=utf-8']]) {
      const r = await fetch(world.base + p);
      assert.equal(r.status, 200, p);
      assert.equal(r.headers.get('content-type'), type, p);
      assert.ok((r.headers.get('content-security-policy') || '').includes("default-src 'none'"), p + ' CSP');
    }
    log('page served with its Content-Type and Content-Security-Policy');

    // ---- the token: asked for, a wrong one refused, the right one kept in sessionStorage
    await page.waitForSelector('#token', { state: 'visible' });
    assert.equal(await page.evaluate(() => document.activeElement.id), 'token', 'the token field has the focus');
    await page.fill('#token', 'not-the-token-0123456789');
    await page.press('#token', 'Enter');
    await page.waitForFunction(() => /refused/.test(document.getElementById('status').textContent));
    assert.ok(await page.isVisible('#auth'));
    tokenGiven = true;
    await page.fill('#token', TOKEN);
    await page.press('#token', 'Enter');
    await page.waitForSelector('#auth', { state: 'hidden' });
    assert.match(await page.textContent('#server-info'), /synth-umg/);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('umgdb-token')), TOKEN);
    assert.equal(await page.evaluate(() => document.activeElement.id), 'q', 'the search box has the focus');
    log('token asked for, a wrong one refused, the right one used');

    // ---- image mode: type, Enter; the hits in the API's order with their scores
    const status = await searched(page, async () => {
      await page.keyboard.type(QUERY);
      await page.keyboard.press('Enter');
    });
    assert.match(status, /^Results 1–24 for “large blue ring”/);
    const want = (await world.api('query', { text: QUERY, granularity: 'image', k: 24 })).hits;
    let cards = await readCards(page);
    assert.deepEqual(cards.map((c) => c.id), want.map((w) => w.image_id), 'cards in the API ranking');
    assert.deepEqual(cards.map((c) => c.score), want.map((w) => w.score.toFixed(3)), 'scores shown');
    assert.deepEqual(cards.map((c) => c.name), want.map((w) => path.basename(w.path)), 'names shown');
    const top = world.annotations[want[0].path];
    assert.ok(top.objects.some((o) => o.phrase === QUERY), `top photo ${top.file} shows a ${QUERY}`);
    await thumbsLoaded(page);
    cards = await readCards(page);
    // the grid shows thumbnails (GET /v1/images/{id}/thumb), not the originals
    assert.deepEqual(pictures.map((p) => p[0]).sort(), cards.map((c) => c.id).sort(), 'one picture per card');
    assert.ok(pictures.every((p) => p[1] === 'thumb' && p[2] === 200), 'thumbnails: ' + JSON.stringify(pictures));
    const natural = await page.$$eval('#results .stage img', (is) => is.map((i) => [i.naturalWidth, i.naturalHeight]));
    for (const [i, [nw, nh]] of natural.entries()) {
      const w = want[i];
      assert.ok(Math.max(nw, nh) <= 320 && Math.abs(nw / nh - w.width / w.height) < 0.03,
        `card ${i}: a thumbnail ${nw}x${nh} of the ${w.width}x${w.height} photo`);
    }
    for (const [i, c] of cards.entries()) {
      // the photo's rectangle keeps its aspect ratio inside the square frame
      const w = want[i];
      assert.ok(Math.abs(c.img.w / c.img.h - w.width / w.height) < 0.02, `card ${i}: aspect ratio`);
      assert.equal(c.box, null, 'no box in image mode');
    }
    log(`image mode: ${cards.length} hits as the API ranks them, thumbnails shown`);

    // ---- region mode: each box drawn where the hit's box falls on its thumbnail
    assert.match(await setMode(page, 'region'), /^Results 1–24/);
    const wantR = (await world.api('query', { text: QUERY, granularity: 'region', k: 24, per_photo: 1 })).hits;
    await thumbsLoaded(page);
    cards = await readCards(page);
    assert.deepEqual(cards.map((c) => c.id), wantR.map((w) => w.image_id));
    for (const [i, c] of cards.entries()) {
      const w = wantR[i];
      assert.ok(c.box, `card ${i} has its box`);
      assertNear(c.box, scaled(w.box, w.width, w.height, c.img), 1.0, `card ${i} box`);
    }
    // read back from the screen: the top box, in photo pixels, is the ring's annotated box
    const c0 = cards[0], w0 = wantR[0];
    const shown = [(c0.box.x - c0.img.x) * w0.width / c0.img.w, (c0.box.y - c0.img.y) * w0.height / c0.img.h,
      c0.box.w * w0.width / c0.img.w, c0.box.h * w0.height / c0.img.h];
    const rings = world.annotations[w0.path].objects.filter((o) => o.phrase === QUERY);
    const best = Math.max(0, ...rings.map((o) => iou(shown, o.box)));
    assert.ok(best >= 0.5, `top box ${JSON.stringify(shown)} on ${w0.path}: IoU ${best.toFixed(2)} with a ${QUERY}`);
    log(`region mode: ${cards.length} boxes where the hits put them; the top one on the ring (IoU ${best.toFixed(2)})`);

    // ---- heatmap mode: grids over their extents, one colour scale, its legend
    assert.match(await setMode(page, 'pixel'), /^Results 1–24/);
    const wantP = (await world.api('query', { text: QUERY, granularity: 'pixel', k: 24 })).hits;
    await thumbsLoaded(page);
    cards = await readCards(page);
    assert.deepEqual(cards.map((c) => c.id), wantP.map((w) => w.image_id));
    const all = wantP.flatMap((w) => w.heatmap.values);
    const lo = Math.min(...all), hi = Math.max(...all);
    assert.ok(await page.isVisible('#legend'), 'legend shown');
    assert.equal(await page.textContent('#legend-lo'), lo.toFixed(3));
    assert.equal(await page.textContent('#legend-hi'), hi.toFixed(3));
    for (const [i, c] of cards.entries()) {
      const w = wantP[i];
      assert.deepEqual(c.heatGrid, [w.heatmap.grid, w.heatmap.grid], `card ${i} heat grid`);
      assertNear(c.heat, scaled(w.heatmap.extent, w.width, w.height, c.img), 1.0, `card ${i} heatmap extent`);
    }
    // the colour of the hottest cell of the page is the top of the scale, the coldest the bottom
    const cellColour = (card, v) => page.evaluate(([ci, v]) => {
      const cv = document.querySelectorAll('#results .card')[ci].querySelector('canvas.heat');
      const g = cv.width;
      return Array.from(cv.getContext('2d').getImageData(v % g, Math.floor(v / g), 1, 1).data);
    }, [card, v]);
    const hotCard = wantP.findIndex((w) => w.heatmap.values.includes(hi));
    const coldCard = wantP.findIndex((w) => w.heatmap.values.includes(lo));
    const hot = await cellColour(hotCard, wantP[hotCard].heatmap.values.indexOf(hi));
    const cold = await cellColour(coldCard, wantP[coldCard].heatmap.values.indexOf(lo));
    assert.ok(hot[0] > 180 && hot[1] < 80 && hot[2] < 80, `hottest cell red: ${hot}`);
    assert.ok(cold[2] > 60 && cold[0] < 60 && cold[3] < hot[3], `coldest cell dark blue, more transparent: ${cold}`);
    log('heatmap mode: every grid over its extent, colours on one scale, legend ' + lo.toFixed(3) + '..' + hi.toFixed(3));

    // ---- paging: 8 a page, forward to the end and back; pages cut from one ranking
    await setMode(page, 'image');
    await page.click('#filters summary');
    await page.fill('#f-k', '8');
    assert.match(await searched(page, () => page.press('#q', 'Enter')), /^Results 1–8 /);
    assert.ok(await page.isDisabled('#prev'));
    const pages = [(await readCards(page)).map((c) => c.id)];
    for (let p = 1; p <= 3; p++) {
      assert.match(await searched(page, () => page.click('#next')), new RegExp(`^Results ${8 * p + 1}–`));
      assert.equal(await page.textContent('#page-info'), 'Page ' + (p + 1));
      pages.push((await readCards(page)).map((c) => c.id));
    }
    assert.deepEqual(pages.map((p) => p.length), [8, 8, 8, 1]);
    assert.ok(await page.isDisabled('#next'), 'no next page after the last hit');
    const ranking = (await world.api('query', { text: QUERY, granularity: 'image', k: 25 })).hits.map((w) => w.image_id);
    assert.deepEqual(pages.flat(), ranking, 'the pages together are the ranking, no hit twice, none missed');
    assert.match(await searched(page, () => page.click('#prev')), /^Results 17–24 /);
    assert.deepEqual(sent.slice(-5).map((r) => r.offset), [0, 8, 16, 24, 16]);
    // two pages turned quickly, the first answer late: the page shown is the last asked for
    await searched(page, () => page.press('#q', 'Enter'));
    let delayed = null;
    await page.route('**/v1/query', async (route) => {
      if (JSON.parse(route.request().postData()).offset !== 8) return route.continue();
      const answer = await route.fetch();
      delayed = new Promise((r) => setTimeout(r, 1500)).then(() => route.fulfill({ response: answer }));
    });
    await page.click('#next');
    await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('Searching'));
    await page.click('#next');
    await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('Results 17–24'));
    while (!delayed) await new Promise((r) => setTimeout(r, 50));
    await delayed;
    await page.waitForTimeout(200); // the late answer has arrived: the page must not change
    await page.unroute('**/v1/query');
    assert.match(await page.textContent('#status'), /^Results 17–24 /);
    assert.equal(await page.textContent('#page-info'), 'Page 3');
    assert.deepEqual((await readCards(page)).map((c) => c.id), ranking.slice(16, 24));
    log('paging: 4 pages of 8 are the ranking of 25; a late answer of a page left does not replace the next');

    // ---- the address: Back goes to the page before; a reload shows the same search
    assert.match(await searched(page, () => page.goBack()), /^Results 9–16 /);
    assert.deepEqual((await readCards(page)).map((c) => c.id), ranking.slice(8, 16));
    const address = new URL(page.url());
    assert.deepEqual(Object.fromEntries(new URLSearchParams(address.hash.slice(1))),
      { q: QUERY, mode: 'image', k: '8', offset: '8' });
    await page.reload();
    await page.waitForFunction(() => /^Results 9–16 /.test(document.getElementById('status').textContent));
    assert.deepEqual((await readCards(page)).map((c) => c.id), ranking.slice(8, 16));
    assert.equal(await page.inputValue('#q'), QUERY);
    assert.equal(await page.inputValue('#f-k'), '8');
    await page.click('#filters summary'); // closed again by the reload
    log('address: Back shows the page before, a reload the same search');

    // ---- boxes per photo (region mode): several boxes of one photo, each a card
    await page.fill('#f-perphoto', '3');
    assert.match(await setMode(page, 'region'), /^Results 1–8 /);
    const wantPP = (await world.api('query', { text: QUERY, granularity: 'region', k: 8, per_photo: 3 })).hits;
    await thumbsLoaded(page);
    cards = await readCards(page);
    assert.equal(sent[sent.length - 1].per_photo, 3);
    assert.deepEqual(cards.map((c) => c.id), wantPP.map((w) => w.image_id));
    assert.ok(new Set(cards.map((c) => c.id)).size < cards.length, 'some photo gives more than one box');
    for (const [i, c] of cards.entries())
      assertNear(c.box, scaled(wantPP[i].box, wantPP[i].width, wantPP[i].height, c.img), 1.0, `per-photo card ${i} box`);
    await page.fill('#f-perphoto', '1');
    await setMode(page, 'image');
    log('boxes per photo: 3 asked, the cards are the API\'s');

    // ---- keyboard: arrows through the grid, Enter opens, the regions drawn, Esc closes
    await searched(page, () => page.press('#q', 'Enter')); // a new search starts at its first page
    await page.focus('#results .card');
    const activeIndex = () => page.evaluate(() => +document.activeElement.dataset.index);
    const cols = await page.evaluate(() => {
      const cs = Array.from(document.querySelectorAll('#results .card'));
      return cs.filter((c) => c.getBoundingClientRect().top === cs[0].getBoundingClientRect().top).length;
    });
    assert.ok(cols >= 4, `a desktop row holds ${cols} cards`);
    await page.keyboard.press('ArrowRight');
    assert.equal(await activeIndex(), 1);
    await page.keyboard.press('ArrowDown');
    assert.equal(await activeIndex(), 1 + cols);
    await page.keyboard.press('ArrowLeft');
    assert.equal(await activeIndex(), cols);
    await page.keyboard.press('ArrowUp');
    assert.equal(await activeIndex(), 0);
    await page.keyboard.press('Tab');
    assert.equal(await activeIndex(), 1, 'Tab goes to the next card');
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    assert.notEqual(outline, 'none', 'the focused card shows its focus');
    const hit1 = (await world.api('query', { text: QUERY, granularity: 'image', k: 8 })).hits[1];
    const rec1 = await world.api('get', { image_id: hit1.image_id });
    await page.keyboard.press('Enter');
    await page.waitForSelector('#viewer[open]');
    await page.waitForFunction((n) => document.querySelectorAll('#viewer-stage .region').length === n, rec1.regions.length);
    assert.equal(await page.textContent('#viewer-title'), hit1.path);
    await page.waitForFunction(() => document.getElementById('viewer-img').naturalWidth > 0);
    // the photo view shows the original (ingested by path under --allow-root): its full size
    assert.deepEqual(pictures[pictures.length - 1], [hit1.image_id, 'file', 200]);
    assert.deepEqual(await page.evaluate(() => [document.getElementById('viewer-img').naturalWidth,
      document.getElementById('viewer-img').naturalHeight]), [rec1.width, rec1.height]);
    const view = await page.evaluate(() => {
      const r = (e) => { const b = e.getBoundingClientRect(); return { x: b.x, y: b.y, w: b.width, h: b.height }; };
      return { img: r(document.getElementById('viewer-img')),
        regions: Array.from(document.querySelectorAll('#viewer-stage .region')).map((e) => ({ id: +e.dataset.regionId, r: r(e) })) };
    });
    assert.ok(view.img.w > 400, `the photo shown large (${view.img.w} px wide)`);
    assert.deepEqual(view.regions.map((x) => x.id), rec1.regions.map((x) => x.region_id));
    for (const [i, reg] of view.regions.entries())
      assertNear(reg.r, scaled(rec1.regions[i].box, rec1.width, rec1.height, view.img), 1.0, `viewer region ${reg.id}`);
    await page.click('#viewer-regions');
    assert.equal(await page.isVisible('#viewer-stage .region'), false, 'regions hidden by the checkbox');
    await page.click('#viewer-regions');
    await page.focus('#viewer-close');
    await page.keyboard.press('ArrowRight');
    await page.waitForFunction((p) => document.getElementById('viewer-title').textContent === p,
      (await world.api('query', { text: QUERY, granularity: 'image', k: 8 })).hits[2].path);
    await page.keyboard.press('Escape');
    await page.waitForSelector('#viewer', { state: 'hidden' });
    // the close event (which moves the focus) comes a task after the dialog is hidden
    await page.waitForFunction(() => document.activeElement.dataset.index === '2', null, { timeout: 5000 })
      .catch(async () => assert.fail(`focus on card ${await activeIndex()}, not on the card last viewed (2)`));
    await page.keyboard.press('/');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'q', '/ goes to the search box');
    assert.equal(await page.inputValue('#q'), QUERY, 'the "/" was not typed into it');
    log(`keyboard: arrows and Tab move, Enter opens the photo with its ${rec1.regions.length} regions placed, Esc closes`);

    // ---- "Similar photos" from the photo view: query_image on that photo
    await page.click('#results .card');
    await page.waitForSelector('#viewer[open]');
    const first = (await readCards(page))[0].id;
    assert.match(await searched(page, () => page.click('#viewer-similar')), new RegExp(`^Results 1–8 for photos like #${first} `));
    const wantS = (await world.api('query_image', { image_id: first, granularity: 'image', k: 8 })).hits;
    assert.deepEqual((await readCards(page)).map((c) => c.id), wantS.map((w) => w.image_id));
    assert.ok(!wantS.some((w) => w.image_id === first), 'the photo itself is not among its similar ones');
    log('similar photos: query_image on the photo viewed');

    // ---- filters: tags, folder; the hostile name and tag shown as text
    await page.fill('#f-k', '24');
    await page.fill('#f-tags', 'even');
    assert.match(await searched(page, () => page.press('#q', 'Enter')), /^Results 1–13 /);
    cards = await readCards(page);
    assert.equal(cards.length, 13);
    for (const c of cards) assert.ok(world.tags[c.id].includes('even'), `image ${c.id} is tagged even`);
    await page.fill('#f-tags', '');
    const xssPath = path.join(world.photos, h.XSS_NAME);
    await page.fill('#f-folder', world.photos + '/<img');
    assert.match(await searched(page, () => page.press('#q', 'Enter')), /^Results 1–1 /);
    cards = await readCards(page);
    assert.deepEqual(cards.map((c) => c.id), [world.ids[xssPath]]);
    assert.equal(cards[0].name, h.XSS_NAME, 'the name shown as text');
    await page.click('#results .card');
    await page.waitForFunction(() => document.querySelectorAll('#viewer-meta .tags li').length === 2);
    assert.equal(await page.textContent('#viewer-title'), xssPath);
    const tagTexts = await page.$$eval('#viewer-meta .tags li', (ls) => ls.map((l) => l.textContent));
    assert.deepEqual(tagTexts.sort(), [h.XSS_TAG, 'even'].sort(), 'the tags shown as text');
    const injected = await page.evaluate(() => ({
      img: document.querySelectorAll('img[src="x"]').length,
      b: document.querySelectorAll('#viewer-meta b').length,
      pwned: window.__pwned === undefined ? null : window.__pwned,
    }));
    assert.deepEqual(injected, { img: 0, b: 0, pwned: null }, 'nothing of the data parsed as HTML');
    await page.keyboard.press('Escape');
    await page.fill('#f-folder', '');
    // filters the synthetic photos cannot pass (no EXIF): no results, and the request carries them
    await page.fill('#f-camera', 'no-such-camera');
    await page.fill('#f-after', '2020-01-01');
    await page.fill('#f-before', '2021-06-30');
    assert.match(await searched(page, () => page.press('#q', 'Enter')), /^No results for “large blue ring”/);
    assert.equal(await page.$$eval('#results .card', (cs) => cs.length), 0);
    assert.deepEqual(sent[sent.length - 1].filters,
      { camera: 'no-such-camera', taken_after: '2020-01-01', taken_before: '2021-06-30' });
    await page.fill('#f-camera', '');
    await page.fill('#f-after', '');
    await page.fill('#f-before', '');
    // the server's refusal shown as an error, the page still usable after it
    await page.fill('#f-tags', 'x'.repeat(300));
    refusalAsked = true;
    assert.match(await searched(page, () => page.press('#q', 'Enter')), /^invalid_argument: .*tag/);
    assert.ok(await page.$eval('#status', (e) => e.classList.contains('error')));
    refusalAsked = false;
    await page.fill('#f-tags', '');
    log('filters: tags, folder, camera and dates sent; the hostile name and tag shown as text');

    // ---- a phone's width: two columns, nothing wider than the screen
    await page.setViewportSize({ width: 390, height: 844 });
    await searched(page, () => page.press('#q', 'Enter'));
    const phone = await page.evaluate(() => {
      const cs = Array.from(document.querySelectorAll('#results .card'));
      return { scrollWidth: document.documentElement.scrollWidth,
        cols: cs.filter((c) => c.getBoundingClientRect().top === cs[0].getBoundingClientRect().top).length,
        q: document.getElementById('q').getBoundingClientRect().width };
    });
    assert.ok(phone.scrollWidth <= 390, `no horizontal scrolling on a phone (${phone.scrollWidth} px)`);
    assert.equal(phone.cols, 2, 'two columns on a phone');
    assert.ok(phone.q > 200, `the search box usable (${phone.q} px)`);
    log('phone width: two columns, no horizontal scrolling');

    assert.deepEqual(problems, [], 'no script errors, CSP violations or unexpected failed requests');
  } finally {
    await browser.close();
    await world.stop();
  }
}

main().then(() => {
  log('test_browser: all checks passed');
  console.log('1 passed, 0 failed');
}, (e) => {
  console.error(e && e.stack ? e.stack : e);
  console.log('0 passed, 1 failed');
  process.exit(1);
});
