// umgdb's search page (docs/http.md, "The web page"): plain JavaScript, no
// build step, served from the binary.  Everything that comes from the data
// (paths, tags, camera names) goes into the page with textContent, never as
// HTML; the server's Content-Security-Policy also requires Trusted Types, so
// an innerHTML assignment would throw rather than parse.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = 'umgdb-token';

  // ---- the API -------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function authHeaders() {
    const t = sessionStorage.getItem(TOKEN_KEY);
    return t ? { Authorization: 'Bearer ' + t } : {};
  }

  // A 401 anywhere asks for the token, then the caller's action fails.
  function checkAuth(res) {
    if (res.status === 401) {
      askToken(sessionStorage.getItem(TOKEN_KEY) ? 'The token was refused.' : '');
      throw new ApiError(401, 'unauthorized', 'This server needs its access token.');
    }
  }

  async function call(method, url, body) {
    const init = { method, headers: authHeaders() };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const res = await fetch(url, init);
    checkAuth(res);
    let answer;
    try {
      answer = await res.json();
    } catch (e) {
      throw new ApiError(res.status, 'protocol_error', 'HTTP ' + res.status + ': not a JSON answer');
    }
    if (!answer.ok) throw new ApiError(res.status, answer.error.code, answer.error.code + ': ' + answer.error.message);
    return answer.result;
  }

  const op = (name, body) => call('POST', '/v1/' + name, body);
  const getImage = (id) => call('GET', '/v1/images/' + id);

  // Photos are fetched (not <img src>) so the Bearer token goes with them;
  // each becomes a blob: URL, kept while at most IMAGE_CACHE are in use.
  const IMAGE_CACHE = 400;
  const imageUrls = new Map(); // "id/kind" -> blob: URL, in insertion order

  async function imageUrl(id, kinds) {
    for (const kind of kinds) {
      const key = id + '/' + kind;
      if (imageUrls.has(key)) return imageUrls.get(key);
      let res;
      try {
        res = await fetch('/v1/images/' + id + '/' + kind, { headers: authHeaders() });
      } catch (e) {
        continue;
      }
      checkAuth(res);
      if (!res.ok) continue;
      const url = URL.createObjectURL(await res.blob());
      imageUrls.set(key, url);
      if (imageUrls.size > IMAGE_CACHE) {
        const [oldKey, oldUrl] = imageUrls.entries().next().value;
        imageUrls.delete(oldKey);
        URL.revokeObjectURL(oldUrl);
      }
      return url;
    }
    return null;
  }

  // ---- token ----------------------------------------------------------------

  function askToken(why) {
    const form = $('auth');
    form.hidden = false;
    setStatus(why || 'This server needs its access token.', true);
    $('token').focus();
  }

  $('auth').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('token').value);
    $('token').value = '';
    if (await hello()) {
      $('auth').hidden = true;
      setStatus('');
      $('q').focus();
      fromAddress();
    }
  });

  async function hello() {
    try {
      const h = await op('hello', {});
      $('server-info').textContent = 'model ' + h.model + ' \u00b7 ' + h.region_mode + ' regions \u00b7 server ' + h.server;
      return true;
    } catch (e) {
      if (e.status !== 401) setStatus(e.message, true);
      return false;
    }
  }

  // ---- search state ---------------------------------------------------------

  // What the shown results answer: a text ({text}) or a photo ({image_id}),
  // in a mode, with filters, from an offset.
  let current = null;
  let hits = [];

  function setStatus(text, isError) {
    const s = $('status');
    s.textContent = text;
    s.classList.toggle('error', !!isError);
  }

  function mode() {
    return document.querySelector('input[name="mode"]:checked').value;
  }

  function intField(id, lo, hi, dflt) {
    const v = parseInt($(id).value, 10);
    return Number.isFinite(v) ? Math.min(hi, Math.max(lo, v)) : dflt;
  }

  function filters() {
    const f = {};
    const tags = $('f-tags').value.split(',').map((t) => t.trim()).filter((t) => t.length);
    if (tags.length) f.tags = tags;
    const folder = $('f-folder').value;
    if (folder) f.path_prefix = folder;
    if ($('f-after').value) f.taken_after = $('f-after').value;
    if ($('f-before').value) f.taken_before = $('f-before').value;
    const camera = $('f-camera').value.trim();
    if (camera) f.camera = camera;
    return f;
  }

  // The filter fields as the address keeps them (the form's words, not the request's).
  const FIELDS = [['tags', 'f-tags'], ['folder', 'f-folder'], ['after', 'f-after'], ['before', 'f-before'],
                  ['camera', 'f-camera']];

  // A new search from the form's state: about = {text} or {image_id}; the
  // address gets it (a new history entry) unless it came from the address.
  function newSearch(about, offset = 0, fromAddress = false) {
    const fields = {};
    for (const [key, id] of FIELDS) fields[key] = $(id).value;
    current = Object.assign({}, about, {
      granularity: mode(),
      filters: filters(),
      fields,
      k: intField('f-k', 1, 1000, 24),
      per_photo: intField('f-perphoto', 1, 100, 1),
      offset: Math.max(0, offset),
    });
    if (!fromAddress) remember();
    return run();
  }

  // ---- the address: the search shown is in the URL's fragment
  // (#q=...&mode=region&k=24&offset=24...), so it can be bookmarked, shared,
  // reloaded and gone back to.

  function remember() {
    const c = current, p = new URLSearchParams();
    if (c.text !== undefined) p.set('q', c.text);
    else p.set('like', String(c.image_id));
    p.set('mode', c.granularity);
    p.set('k', String(c.k));
    if (c.offset) p.set('offset', String(c.offset));
    if (c.granularity === 'region' && c.per_photo !== 1) p.set('per_photo', String(c.per_photo));
    for (const [key] of FIELDS) if (c.fields[key]) p.set(key, c.fields[key]);
    history.pushState(null, '', '#' + p.toString());
  }

  // The search the address names, run (false when it names none).
  function fromAddress() {
    const p = new URLSearchParams(location.hash.slice(1));
    const text = p.get('q'), like = p.get('like');
    if (text === null && like === null) return false;
    for (const [key, id] of FIELDS) $(id).value = p.get(key) || '';
    $('f-k').value = p.get('k') || '24';
    $('f-perphoto').value = p.get('per_photo') || '1';
    for (const r of document.querySelectorAll('input[name="mode"]')) r.checked = r.value === (p.get('mode') || 'image');
    if (text !== null) $('q').value = text;
    newSearch(text !== null ? { text } : { image_id: parseInt(like, 10) }, parseInt(p.get('offset'), 10) || 0, true);
    return true;
  }

  window.addEventListener('popstate', () => {
    if ($('viewer').open) $('viewer').close();
    if (fromAddress()) return;
    current = null; // back before the first search
    hits = [];
    render();
    setStatus('');
  });

  async function run() {
    const c = current;
    const req = { granularity: c.granularity, k: c.k, offset: c.offset };
    if (Object.keys(c.filters).length) req.filters = c.filters;
    if (c.granularity === 'region') req.per_photo = c.per_photo;
    let opName = 'query';
    if (c.text !== undefined) req.text = c.text;
    else {
      opName = 'query_image';
      req.image_id = c.image_id;
    }
    setStatus('Searching\u2026');
    document.body.classList.add('busy');
    const t0 = performance.now();
    try {
      const result = await op(opName, req);
      if (c !== current) return; // a newer search started meanwhile
      hits = result.hits;
      render();
      const secs = ((performance.now() - t0) / 1000).toFixed(2);
      const what = c.text !== undefined ? '\u201c' + c.text + '\u201d' : 'photos like #' + c.image_id;
      if (!hits.length)
        setStatus(c.offset ? 'No more results for ' + what + '.' : 'No results for ' + what + '.');
      else
        setStatus('Results ' + (c.offset + 1) + '\u2013' + (c.offset + hits.length) + ' for ' + what +
                  ' (' + secs + ' s)');
    } catch (e) {
      if (c !== current) return;
      hits = [];
      render();
      if (e.status !== 401) setStatus(e.message, true);
    } finally {
      if (c === current) document.body.classList.remove('busy');
    }
  }

  $('search').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = $('q').value.trim();
    if (text) newSearch({ text });
  });

  // Changing the mode re-runs the search shown, from its first page.
  for (const r of document.querySelectorAll('input[name="mode"]'))
    r.addEventListener('change', () => {
      if (current) newSearch(current.text !== undefined ? { text: current.text } : { image_id: current.image_id });
    });

  // A page is a new search object, so the answer of a page left meanwhile is dropped.
  function turnPage(offset) {
    current = Object.assign({}, current, { offset: Math.max(0, offset) });
    remember();
    run();
  }
  $('prev').addEventListener('click', () => turnPage(current.offset - current.k));
  $('next').addEventListener('click', () => turnPage(current.offset + current.k));

  // ---- drawing --------------------------------------------------------------

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // Places e over the photo's rectangle [x, y, w, h] (photo pixels, `size` =
  // [width, height]) in percentages of the stage, which has the photo's aspect
  // ratio: right at any displayed size.
  function place(e, rect, size) {
    e.style.left = (100 * rect[0] / size[0]) + '%';
    e.style.top = (100 * rect[1] / size[1]) + '%';
    e.style.width = (100 * rect[2] / size[0]) + '%';
    e.style.height = (100 * rect[3] / size[1]) + '%';
  }

  // The heatmap colour scale: dark blue, blue, green, yellow, red over [0, 1].
  const STOPS = [[0.0, 20, 20, 90], [0.25, 30, 90, 220], [0.5, 40, 190, 90], [0.75, 250, 220, 40], [1.0, 220, 30, 30]];
  function colour(t) {
    t = Math.min(1, Math.max(0, t));
    for (let i = 1; i < STOPS.length; i++) {
      if (t <= STOPS[i][0]) {
        const a = STOPS[i - 1], b = STOPS[i], u = (t - a[0]) / (b[0] - a[0]);
        return [0, 1, 2].map((j) => Math.round(a[j + 1] + u * (b[j + 1] - a[j + 1])));
      }
    }
    return STOPS[STOPS.length - 1].slice(1);
  }

  // One range for every heatmap of the page, so colours compare across photos.
  function heatRange(list) {
    let lo = Infinity, hi = -Infinity;
    for (const h of list)
      if (h.heatmap) for (const v of h.heatmap.values) { if (v < lo) lo = v; if (v > hi) hi = v; }
    if (!(hi > lo)) return null;
    return [lo, hi];
  }

  function heatCanvas(hm, size, range) {
    const g = hm.grid;
    const cv = el('canvas', 'heat');
    cv.width = g;
    cv.height = g;
    const ctx = cv.getContext('2d');
    const img = ctx.createImageData(g, g);
    for (let i = 0; i < g * g; i++) {
      const t = (hm.values[i] - range[0]) / (range[1] - range[0]);
      const c = colour(t);
      // colder cells more transparent: the photo stays visible where nothing matches
      img.data.set([c[0], c[1], c[2], Math.round(25 + 205 * t * t)], 4 * i);
    }
    ctx.putImageData(img, 0, 0);
    place(cv, hm.extent, size); // the grid covers `extent` (beyond the photo on padded sides: clipped)
    return cv;
  }

  function drawLegend(range) {
    const legend = $('legend');
    legend.hidden = !range;
    if (!range) return;
    const cv = $('legend-bar');
    const ctx = cv.getContext('2d');
    const img = ctx.createImageData(cv.width, 1);
    for (let x = 0; x < cv.width; x++) {
      const c = colour(x / (cv.width - 1));
      img.data.set([c[0], c[1], c[2], 255], 4 * x);
    }
    ctx.putImageData(img, 0, 0);
    $('legend-lo').textContent = range[0].toFixed(3);
    $('legend-hi').textContent = range[1].toFixed(3);
  }

  // A stage: the photo's frame (its aspect ratio), the image and its overlays
  // (spans: a card is a button, which holds phrasing content only).
  function stage() {
    const s = el('span', 'stage');
    const img = el('img');
    img.alt = '';
    s.appendChild(img);
    return { s, img };
  }

  function loadInto(img, id, kinds, holder) {
    holder.classList.add('loading');
    imageUrl(id, kinds).then((url) => {
      holder.classList.remove('loading');
      if (url) img.src = url;
      else holder.classList.add('nopreview');
    }, () => holder.classList.remove('loading'));
  }

  function baseName(path) {
    const i = path.lastIndexOf('/');
    return i >= 0 && i < path.length - 1 ? path.slice(i + 1) : path;
  }

  function render() {
    const list = $('results');
    list.replaceChildren();
    const range = current && current.granularity === 'pixel' ? heatRange(hits) : null;
    drawLegend(range);
    hits.forEach((hit, i) => {
      const li = el('li');
      const card = el('button', 'card');
      card.type = 'button';
      card.dataset.index = String(i);
      card.dataset.imageId = String(hit.image_id);
      card.setAttribute('aria-label', baseName(hit.path) + ', score ' + hit.score.toFixed(3));
      const frame = el('span', 'frame');
      const size = [hit.width, hit.height];
      const { s, img } = stage();
      // fit the photo in the square frame, centred (percentages of the frame's side)
      const wide = hit.width >= hit.height;
      const r = wide ? hit.height / hit.width : hit.width / hit.height;
      if (wide) {
        s.style.width = '100%';
        s.style.height = (100 * r) + '%';
        s.style.top = (50 * (1 - r)) + '%';
      } else {
        s.style.height = '100%';
        s.style.width = (100 * r) + '%';
        s.style.left = (50 * (1 - r)) + '%';
      }
      if (hit.heatmap && range) s.appendChild(heatCanvas(hit.heatmap, size, range));
      if (hit.box) {
        const b = el('span', 'box');
        place(b, hit.box, size);
        s.appendChild(b);
      }
      frame.appendChild(s);
      card.appendChild(frame);
      const cap = el('span', 'caption');
      cap.appendChild(el('span', 'name', baseName(hit.path)));
      cap.appendChild(el('span', 'score', hit.score.toFixed(3)));
      card.appendChild(cap);
      card.title = hit.path;
      card.addEventListener('click', () => openViewer(i));
      li.appendChild(card);
      list.appendChild(li);
      loadInto(img, hit.image_id, ['thumb', 'file'], s);
    });
    const pager = $('pager');
    pager.hidden = !current || (!hits.length && !current.offset);
    if (current) {
      $('prev').disabled = current.offset === 0;
      $('next').disabled = hits.length < current.k || current.offset + current.k > 10000; // the protocol's offset limit
      const page = Math.floor(current.offset / current.k) + 1;
      $('page-info').textContent = 'Page ' + page;
    }
  }

  // ---- keyboard in the grid ---------------------------------------------------

  function cards() {
    return Array.from(document.querySelectorAll('#results .card'));
  }

  function columns(list) {
    if (!list.length) return 1;
    const top = list[0].getBoundingClientRect().top;
    let n = 0;
    while (n < list.length && Math.abs(list[n].getBoundingClientRect().top - top) < 2) n++;
    return Math.max(1, n);
  }

  $('results').addEventListener('keydown', (ev) => {
    const list = cards();
    const i = list.indexOf(document.activeElement);
    if (i < 0) return;
    const cols = columns(list);
    const to = { ArrowRight: i + 1, ArrowLeft: i - 1, ArrowDown: i + cols, ArrowUp: i - cols,
                 Home: 0, End: list.length - 1 }[ev.key];
    if (to === undefined) return;
    ev.preventDefault();
    list[Math.min(list.length - 1, Math.max(0, to))].focus();
  });

  // "/" anywhere but in a field: to the search box
  document.addEventListener('keydown', (ev) => {
    if (ev.key !== '/' || ev.ctrlKey || ev.metaKey || ev.altKey || $('viewer').open) return;
    const t = ev.target;
    if (t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement) return;
    ev.preventDefault();
    $('q').focus();
    $('q').select();
  });

  // ---- the photo view -----------------------------------------------------------

  let viewing = -1; // index into hits

  function meta(dl, term, value) {
    if (value === undefined || value === null || value === '') return;
    dl.appendChild(el('dt', null, term));
    const dd = el('dd');
    if (Array.isArray(value)) {
      const ul = el('ul', 'tags');
      for (const v of value) ul.appendChild(el('li', null, v));
      dd.appendChild(ul);
    } else {
      dd.textContent = String(value);
    }
    dl.appendChild(dd);
  }

  async function openViewer(i) {
    const hit = hits[i];
    if (!hit) return;
    viewing = i;
    const dlg = $('viewer');
    $('viewer-title').textContent = hit.path;
    const st = $('viewer-stage');
    // one stage, emptied of the last photo's overlays
    const img = $('viewer-img');
    img.removeAttribute('src');
    img.alt = baseName(hit.path);
    st.replaceChildren(img);
    st.classList.remove('nopreview');
    // as large as fits: 100% of the dialog's width or 72% of the viewport's height
    st.style.aspectRatio = hit.width + ' / ' + hit.height;
    st.style.width = 'min(100%, calc(72vh * ' + (hit.width / hit.height) + '))';
    const dl = $('viewer-meta');
    dl.replaceChildren();
    meta(dl, 'Score', hit.score.toFixed(4));
    if (!dlg.open) dlg.showModal();
    $('viewer-close').focus();
    const size = [hit.width, hit.height];
    if (hit.heatmap) {
      const range = heatRange([hit]);
      if (range) st.appendChild(heatCanvas(hit.heatmap, size, range));
    }
    loadInto(img, hit.image_id, ['file', 'thumb'], st);
    let rec;
    try {
      rec = await getImage(hit.image_id);
    } catch (e) {
      if (viewing === i) meta(dl, 'Error', e.message);
      return;
    }
    if (viewing !== i || !dlg.open) return;
    for (const r of rec.regions) {
      const b = el('div', 'region');
      b.dataset.regionId = String(r.region_id);
      b.title = 'region ' + r.region_id + ' (' + r.method + ')';
      place(b, r.box, [rec.width, rec.height]);
      st.appendChild(b);
    }
    if (hit.box) {
      const b = el('div', 'box');
      place(b, hit.box, size);
      st.appendChild(b);
    }
    meta(dl, 'Image id', rec.image_id);
    meta(dl, 'Size', rec.width + ' \u00d7 ' + rec.height + ' px, ' + rec.bytes + ' bytes');
    meta(dl, 'Regions', rec.regions.length + (hit.box ? ' (the hit in bold)' : ''));
    meta(dl, 'Tags', rec.tags && rec.tags.length ? rec.tags : undefined);
    meta(dl, 'Taken', rec.taken_at);
    meta(dl, 'Camera', rec.camera);
    meta(dl, 'Position', rec.gps ? rec.gps[0].toFixed(5) + ', ' + rec.gps[1].toFixed(5) : undefined);
    meta(dl, 'Modified', new Date(rec.mtime * 1000).toISOString().slice(0, 19).replace('T', ' '));
  }

  $('viewer-close').addEventListener('click', () => $('viewer').close());
  $('viewer-regions').addEventListener('change', (ev) => {
    $('viewer-stage').classList.toggle('noregions', !ev.target.checked);
  });
  $('viewer').addEventListener('close', () => {
    const card = cards()[viewing];
    viewing = -1;
    if (card) card.focus();
  });
  $('viewer').addEventListener('keydown', (ev) => {
    if (ev.key === 'ArrowRight' || ev.key === 'ArrowLeft') {
      const to = viewing + (ev.key === 'ArrowRight' ? 1 : -1);
      if (to >= 0 && to < hits.length) {
        ev.preventDefault();
        openViewer(to);
      }
    }
  });
  // a click on the backdrop (outside the dialog's box) closes it
  $('viewer').addEventListener('click', (ev) => {
    if (ev.target === $('viewer')) {
      const r = $('viewer').getBoundingClientRect();
      if (ev.clientX < r.left || ev.clientX > r.right || ev.clientY < r.top || ev.clientY > r.bottom)
        $('viewer').close();
    }
  });
  $('viewer-similar').addEventListener('click', () => {
    const hit = hits[viewing];
    if (!hit) return;
    $('viewer').close();
    newSearch({ image_id: hit.image_id });
  });

  // ---- start ------------------------------------------------------------------

  hello().then((ok) => {
    if (!ok) return;
    $('q').focus();
    fromAddress();
  });
})();
