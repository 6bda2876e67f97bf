// GMMAS clinicians' viewer: log in with a bearer token, list and upload cases, view the
// sequences with the segmentation overlay, read the analysis, correct labels.
// Plain browser JavaScript (no build step, no remote resources); NIfTI is decoded here.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = 'gmmas.token';
  const SEQUENCES = ['t1', 't1ce', 't2', 'flair'];
  const SEQUENCE_NAMES = { t1: 'T1', t1ce: 'T1ce', t2: 'T2', flair: 'FLAIR' };
  // File name suffixes of BraTS 2018-2021 and 2023 (and t1gd) to the API's form fields.
  const SUFFIXES = {
    t1: 't1', t1n: 't1', t1ce: 't1ce', t1c: 't1ce', t1gd: 't1ce',
    t2: 't2', t2w: 't2', flair: 'flair', t2f: 'flair', seg: 'seg',
  };
  const ROLES = ['clinician', 'ml-engineer', 'admin'];
  // Overlay colours by BraTS label (3 is the old ET label).
  const LABEL_RGB = { 1: [255, 64, 64], 2: [64, 220, 64], 3: [255, 220, 0], 4: [255, 220, 0] };
  const LABEL_NAMES = { 0: 'background', 1: 'NCR', 2: 'ED', 3: 'ET', 4: 'ET' };
  const PROBABILITIES = [
    ['grade_gbm', 'Grade: GBM (vs lower grade)'],
    ['idh_mutant', 'IDH mutant'],
    ['codel_1p19q', '1p/19q codeleted'],
    ['mgmt_methylated', 'MGMT promoter methylated'],
  ];
  const PLANES = ['axial', 'coronal', 'sagittal'];
  // Each plane: the world axis (RAS) held fixed, and the world axes along the screen's
  // columns and rows. Screen right and down go towards decreasing world coordinates, which
  // gives the radiological convention (patient's right on the left, anterior/superior up).
  const PLANE_AXES = {
    axial: { fixed: 2, col: 0, row: 1, letters: ['R', 'L', 'A', 'P'] },
    coronal: { fixed: 1, col: 0, row: 2, letters: ['R', 'L', 'S', 'I'] },
    sagittal: { fixed: 0, col: 1, row: 2, letters: ['A', 'P', 'S', 'I'] },
  };

  const session = { token: null, claims: null, expiryTimer: null };
  let view = null; // the open case (see openCase)
  let openSeq = 0; // increments on every navigation; stale async work checks it
  let upload = { files: {}, ignored: [], refEdited: false };

  // ---------- session ----------

  function decodeJwtPayload(token) {
    const parts = token.split('.');
    if (parts.length !== 3) throw new Error('this is not a JWT (expected three parts separated by dots)');
    let b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    b64 += '='.repeat((4 - (b64.length % 4)) % 4);
    let json;
    try {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      json = JSON.parse(new TextDecoder().decode(bytes));
    } catch (e) {
      throw new Error('the token payload is not base64url JSON');
    }
    return json;
  }

  function checkClaims(c) {
    if (typeof c.sub !== 'string' || !c.sub) throw new Error('the token has no subject (sub)');
    if (typeof c.tenant !== 'string' || !c.tenant) throw new Error('the token names no tenant (hospital)');
    // The role claim is a name or (from a hospital's identity provider) a list of names.
    const roles = (Array.isArray(c.role) ? c.role : [c.role]).filter((r) => ROLES.includes(r));
    if (!roles.length) throw new Error(`no GMMAS role in ${JSON.stringify(c.role)}: expected ${ROLES.join(', ')}`);
    c.roles = roles;
    if (typeof c.exp !== 'number') throw new Error('the token has no expiry (exp)');
    if (c.exp * 1000 <= Date.now()) throw new Error(`the token expired at ${new Date(c.exp * 1000).toLocaleString()}`);
  }

  function logIn(token) {
    token = token.trim();
    const claims = decodeJwtPayload(token);
    checkClaims(claims);
    session.token = token;
    session.claims = claims;
    sessionStorage.setItem(TOKEN_KEY, token);
    $('session-who').textContent =
      `${claims.sub} · ${claims.roles.join(', ')} · ${claims.tenant} · until ${new Date(claims.exp * 1000).toLocaleString()}`;
    $('session').hidden = false;
    clearTimeout(session.expiryTimer);
    const left = claims.exp * 1000 - Date.now();
    // setTimeout holds at most ~24.8 days.
    if (left < 2 ** 31 - 1) session.expiryTimer = setTimeout(() => logOut('Your token expired; log in again.'), left);
  }

  function logOut(message) {
    openSeq++;
    view = null;
    session.token = null;
    session.claims = null;
    clearTimeout(session.expiryTimer);
    sessionStorage.removeItem(TOKEN_KEY);
    $('session').hidden = true;
    $('login-error').textContent = message || '';
    $('token-input').value = '';
    if (location.hash) history.replaceState(null, '', location.pathname);
    show('login-view');
  }

  function tenantPath() {
    return `/api/v1/tenants/${encodeURIComponent(session.claims.tenant)}`;
  }

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // Every API call carries the token; a 401 ends the session.
  async function api(path, options = {}) {
    if (!session.token) throw new HttpError(401, 'not logged in');
    const headers = new Headers(options.headers || {});
    headers.set('Authorization', `Bearer ${session.token}`);
    const resp = await fetch(path, { ...options, headers, cache: 'no-cache' });
    if (resp.status === 401) {
      logOut('The server refused the token (401): log in again.');
      throw new HttpError(401, 'unauthorized');
    }
    if (!resp.ok) {
      let message = `${resp.status} ${resp.statusText}`;
      try {
        const body = await resp.json();
        if (body && body.error) message = `${resp.status}: ${body.error}`;
      } catch (e) { /* not JSON */ }
      throw new HttpError(resp.status, message);
    }
    return resp;
  }

  async function apiJson(path, options) {
    return (await api(path, options)).json();
  }

  // ---------- navigation ----------

  function show(id) {
    for (const v of document.querySelectorAll('.view')) v.hidden = v.id !== id;
  }

  function route() {
    if (!session.token) return show('login-view');
    const m = location.hash.match(/^#\/case\/([0-9a-fA-F-]{36})$/);
    openSeq++;
    if (m) {
      openCase(m[1], openSeq);
    } else {
      view = null;
      show('cases-view');
      loadCases();
    }
  }

  // ---------- case list ----------

  let caseRows = [];

  async function loadCases() {
    const seq = openSeq;
    const status = $('status-filter').value;
    const q = new URLSearchParams({ limit: '500' });
    if (status) q.set('status', status);
    $('cases-message').textContent = 'Loading…';
    try {
      const rows = await apiJson(`${tenantPath()}/cases?${q}`);
      if (seq !== openSeq) return;
      caseRows = rows;
      renderCases();
    } catch (e) {
      if (e.status !== 401) $('cases-message').textContent = `Could not list cases: ${e.message}`;
    }
  }

  function renderCases() {
    const needle = $('case-search').value.trim().toLowerCase();
    const rows = caseRows.filter(
      (c) => !needle || c.case_ref.toLowerCase().includes(needle) || c.case_id.includes(needle),
    );
    const body = $('case-rows');
    body.replaceChildren();
    for (const c of rows) {
      const tr = document.createElement('tr');
      tr.dataset.testid = 'case-row';
      tr.dataset.caseId = c.case_id;
      tr.title = c.error || c.case_id;
      const badge = el('span', `badge ${c.status}`, c.status);
      tr.append(el('td', '', c.case_ref), cell(badge), el('td', '', fmtTime(c.created_at)), el('td', '', fmtTime(c.updated_at)));
      tr.addEventListener('click', () => { location.hash = `#/case/${c.case_id}`; });
      body.append(tr);
    }
    $('cases-message').textContent = rows.length
      ? `${rows.length} of ${caseRows.length} cases`
      : caseRows.length ? 'No case matches the search.' : 'No cases yet: upload one.';
  }

  // ---------- upload ----------

  function classify(name) {
    const m = name.toLowerCase().match(/^(.*?)(?:^|[_\-. ])(t1ce|t1gd|t1n|t1c|t1|t2w|t2f|t2|flair|seg)\.nii(?:\.gz)?$/);
    if (!m) return null;
    return { seq: SUFFIXES[m[2]], stem: name.slice(0, m[1].length) };
  }

  async function filesFromDrop(dataTransfer) {
    // Entries must be taken before the first await: the drop's data is gone after it.
    const entries = [...dataTransfer.items]
      .filter((i) => i.kind === 'file' && i.webkitGetAsEntry)
      .map((i) => i.webkitGetAsEntry())
      .filter(Boolean);
    if (!entries.length) return [...dataTransfer.files];
    const files = [];
    const walk = async (entry) => {
      if (entry.isFile) {
        files.push(await new Promise((resolve, reject) => entry.file(resolve, reject)));
      } else if (entry.isDirectory) {
        const reader = entry.createReader();
        for (;;) {
          const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
          if (!batch.length) break;
          for (const e of batch) await walk(e);
        }
      }
    };
    for (const e of entries) await walk(e);
    return files;
  }

  function chooseFiles(files) {
    upload = { files: {}, ignored: [], refEdited: upload.refEdited };
    let stem = null;
    for (const f of files) {
      const c = classify(f.name);
      if (!c) {
        upload.ignored.push(`${f.name} (not a recognised NIfTI sequence name)`);
      } else if (c.seq === 'seg') {
        upload.ignored.push(`${f.name} (a segmentation: not uploaded)`);
      } else if (upload.files[c.seq]) {
        upload.ignored.push(`${f.name} (a second ${SEQUENCE_NAMES[c.seq]} file)`);
      } else {
        upload.files[c.seq] = f;
        if (stem === null && c.stem) stem = c.stem;
      }
    }
    const body = $('recognised-rows');
    body.replaceChildren();
    for (const s of SEQUENCES) {
      const f = upload.files[s];
      const tr = el('tr');
      tr.dataset.testid = `recognised-${s}`;
      tr.append(el('td', '', SEQUENCE_NAMES[s]), el('td', f ? '' : 'muted', f ? `${f.name} (${fmtBytes(f.size)})` : 'missing'));
      body.append(tr);
    }
    $('ignored-files').textContent = upload.ignored.length ? `Ignored: ${upload.ignored.join('; ')}` : '';
    if (!upload.refEdited && stem) $('case-ref').value = stem.replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 128);
    updateUploadButton();
  }

  function updateUploadButton() {
    const ref = $('case-ref').value.trim();
    const okRef = /^[A-Za-z0-9._-]{1,128}$/.test(ref);
    const n = Object.keys(upload.files).length;
    $('upload-button').disabled = !(okRef && n > 0);
    const status = $('upload-status');
    if (n > 0 && !okRef) {
      status.textContent = 'Case reference: 1-128 letters, digits, ".", "_" or "-".';
      status.dataset.kind = 'hint';
    } else if (status.dataset.kind === 'hint') {
      status.textContent = '';
      status.dataset.kind = '';
    }
  }

  async function doUpload() {
    const form = new FormData();
    form.append('case_ref', $('case-ref').value.trim());
    for (const s of SEQUENCES) if (upload.files[s]) form.append(s, upload.files[s], upload.files[s].name);
    $('upload-button').disabled = true;
    $('upload-status').textContent = 'Uploading…';
    $('upload-status').dataset.kind = '';
    try {
      const created = await apiJson(`${tenantPath()}/cases`, { method: 'POST', body: form });
      $('upload-status').textContent = `Uploaded: case ${created.case_id} (${created.modalities.join(', ')})`;
      upload = { files: {}, ignored: [], refEdited: false };
      $('file-input').value = '';
      $('folder-input').value = '';
      location.hash = `#/case/${created.case_id}`;
    } catch (e) {
      if (e.status !== 401) $('upload-status').textContent = `Upload refused: ${e.message}`;
      updateUploadButton();
    }
  }

  // ---------- NIfTI ----------

  const DATATYPES = {
    2: [Uint8Array, 1], 256: [Int8Array, 1], 4: [Int16Array, 2], 512: [Uint16Array, 2],
    8: [Int32Array, 4], 768: [Uint32Array, 4], 16: [Float32Array, 4], 64: [Float64Array, 8],
  };
  const GETTERS = {
    2: 'getUint8', 256: 'getInt8', 4: 'getInt16', 512: 'getUint16',
    8: 'getInt32', 768: 'getUint32', 16: 'getFloat32', 64: 'getFloat64',
  };

  async function fetchNifti(path) {
    const resp = await api(path);
    let buf;
    if ((resp.headers.get('Content-Type') || '').includes('gzip')) {
      buf = await new Response(resp.body.pipeThrough(new DecompressionStream('gzip'))).arrayBuffer();
    } else {
      buf = await resp.arrayBuffer();
      const b = new Uint8Array(buf, 0, 2);
      if (b[0] === 0x1f && b[1] === 0x8b) {
        buf = await new Response(new Blob([buf]).stream().pipeThrough(new DecompressionStream('gzip'))).arrayBuffer();
      }
    }
    return parseNifti(buf);
  }

  function parseNifti(buf) {
    if (buf.byteLength < 352) throw new Error('too short for a NIfTI-1 file');
    const dv = new DataView(buf);
    let le = true;
    if (dv.getInt32(0, true) !== 348) {
      if (dv.getInt32(0, false) !== 348) throw new Error('not a NIfTI-1 file');
      le = false;
    }
    const magic = String.fromCharCode(dv.getUint8(344), dv.getUint8(345), dv.getUint8(346));
    if (magic !== 'n+1') throw new Error(`NIfTI magic ${JSON.stringify(magic)}: expected a single-file n+1 image`);
    const dim = [];
    for (let i = 0; i < 8; i++) dim.push(dv.getInt16(40 + 2 * i, le));
    const dims = [1, 2, 3].map((i) => (i <= dim[0] ? Math.max(1, dim[i]) : 1));
    const pixdim = [];
    for (let i = 0; i < 8; i++) pixdim.push(dv.getFloat32(76 + 4 * i, le));
    const datatype = dv.getInt16(70, le);
    const dt = DATATYPES[datatype];
    if (!dt) throw new Error(`NIfTI datatype ${datatype} is not supported`);
    const offset = Math.floor(dv.getFloat32(108, le));
    const slope = dv.getFloat32(112, le);
    const inter = dv.getFloat32(116, le);
    const n = dims[0] * dims[1] * dims[2];
    const [Typed, size] = dt;
    if (offset < 352 || offset + n * size > buf.byteLength) throw new Error('NIfTI voxel data is shorter than its header says');
    let data;
    if (le && offset % size === 0) {
      data = new Typed(buf, offset, n);
    } else {
      data = new Typed(n);
      const get = GETTERS[datatype];
      for (let i = 0; i < n; i++) data[i] = dv[get](offset + i * size, le);
    }
    if (slope !== 0 && Number.isFinite(slope) && (slope !== 1 || inter !== 0)) {
      const scaled = new Float32Array(n);
      for (let i = 0; i < n; i++) scaled[i] = data[i] * slope + inter;
      data = scaled;
    }
    return {
      dims,
      pixdim: [1, 2, 3].map((i) => (Math.abs(pixdim[i]) > 0 ? Math.abs(pixdim[i]) : 1)),
      affine: affineOf(dv, le, pixdim),
      datatype,
      le,
      header: new Uint8Array(buf.slice(0, offset)),
      data,
    };
  }

  // Voxel-to-world matrix (rows of 4): sform, else qform, else the voxel sizes.
  function affineOf(dv, le, pixdim) {
    const qformCode = dv.getInt16(252, le);
    const sformCode = dv.getInt16(254, le);
    if (sformCode > 0) {
      const rows = [];
      for (let r = 0; r < 3; r++) {
        const row = [];
        for (let c = 0; c < 4; c++) row.push(dv.getFloat32(280 + 16 * r + 4 * c, le));
        rows.push(row);
      }
      return rows;
    }
    const px = [pixdim[1] || 1, pixdim[2] || 1, pixdim[3] || 1];
    if (qformCode > 0) {
      const b = dv.getFloat32(256, le);
      const c = dv.getFloat32(260, le);
      const d = dv.getFloat32(264, le);
      const a = Math.sqrt(Math.max(0, 1 - b * b - c * c - d * d));
      const qfac = pixdim[0] < 0 ? -1 : 1;
      const R = [
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
      ];
      const off = [dv.getFloat32(268, le), dv.getFloat32(272, le), dv.getFloat32(276, le)];
      return R.map((row, r) => [row[0] * px[0], row[1] * px[1], row[2] * px[2] * qfac, off[r]]);
    }
    return [[px[0], 0, 0, 0], [0, px[1], 0, 0], [0, 0, px[2], 0]];
  }

  // For each world axis (R, A, S): the voxel axis nearest to it and whether they point the same way.
  function orientation(affine) {
    const byWorld = [null, null, null];
    for (let a = 0; a < 3; a++) {
      let best = 0;
      for (let w = 1; w < 3; w++) if (Math.abs(affine[w][a]) > Math.abs(affine[best][a])) best = w;
      if (byWorld[best]) return [0, 1, 2].map((w) => ({ axis: w, sign: 1 })); // degenerate: voxel order
      byWorld[best] = { axis: a, sign: affine[best][a] < 0 ? -1 : 1 };
    }
    return byWorld;
  }

  // Writes a label map with the header it was read with (scaling reset), as gzip.
  async function encodeLabels(seg, labels) {
    const header = seg.header.slice();
    const hv = new DataView(header.buffer);
    const le = seg.le;
    hv.setFloat32(112, 1, le);
    hv.setFloat32(116, 0, le);
    const [, size] = DATATYPES[seg.datatype];
    const out = new Uint8Array(header.length + labels.length * size);
    out.set(header);
    const dv = new DataView(out.buffer, header.length);
    const set = GETTERS[seg.datatype].replace('get', 'set');
    if (size === 1) out.set(labels, header.length);
    else for (let i = 0; i < labels.length; i++) dv[set](i * size, labels[i], le);
    const gz = new Blob([out]).stream().pipeThrough(new CompressionStream('gzip'));
    return new Uint8Array(await new Response(gz).arrayBuffer());
  }

  // ---------- a case ----------

  async function openCase(id, seq) {
    show('case-view');
    $('case-title').textContent = id;
    $('case-status').textContent = '';
    $('case-error').textContent = '';
    $('open-time').textContent = '';
    $('case-body').hidden = true;
    $('stages').replaceChildren();
    view = null;
    for (;;) {
      const requested = performance.now();
      let c;
      try {
        c = await apiJson(`${tenantPath()}/cases/${id}`);
      } catch (e) {
        if (seq !== openSeq) return;
        if (e.status === 401) return;
        $('case-error').textContent = e.status === 404 ? 'No such case for this hospital.' : `Could not read the case: ${e.message}`;
        if (e.status === 404 || e.status === 403) return;
        await sleep(2000);
        continue;
      }
      if (seq !== openSeq) return;
      $('case-error').textContent = '';
      renderCaseHead(c);
      if (c.status === 'failed') {
        $('case-error').textContent = `Failed${c.error_stage ? ` at ${c.error_stage}` : ''}: ${c.error || 'no reason recorded'}`;
        return;
      }
      if (c.status === 'done' && c.analysis) return showAnalysis(c, seq, requested);
      await sleep(1000);
      if (seq !== openSeq) return;
    }
  }

  function renderCaseHead(c) {
    $('case-title').textContent = c.case_ref;
    const badge = $('case-status');
    badge.textContent = c.status;
    badge.className = `badge ${c.status}`;
    const stages = $('stages');
    stages.replaceChildren();
    for (const s of c.stages) {
      const li = el('li', '', `${s.stage}: ${s.status}${s.duration_ms != null ? ` (${s.duration_ms} ms)` : ''}`);
      li.dataset.testid = `stage-${s.stage}`;
      stages.append(li);
    }
  }

  async function showAnalysis(c, seq, started) {
    const a = c.analysis;
    view = {
      id: c.case_id, c, a, seq, started,
      vols: {}, seg: null, labels: null, saved: null, unc: null, uncMax: 1,
      modality: null, cross: [0, 0, 0], windows: {}, dims: null, orient: null,
      geometry: {}, firstRenderMs: null, allLoadedMs: null, edits: 0,
    };
    renderResults(c);
    renderLabelForm();
    loadReport(c, seq);
    $('case-body').hidden = false;
    const sel = $('sequence-select');
    sel.replaceChildren();
    for (const m of c.modalities) {
      const o = el('option', '', `${SEQUENCE_NAMES[m] || m} (loading)`);
      o.value = m;
      o.disabled = true;
      sel.append(o);
    }
    $('uncertainty-control').hidden = !a.uncertainty_url;
    $('uncertainty-toggle').checked = false;
    $('uncertainty-legend').hidden = true;
    $('seg-save').disabled = true;
    $('seg-status').textContent = '';
    // First the sequence shown and the segmentation, so the planes appear early; then the rest.
    const first = ['flair', 't1ce', 't2', 't1'].find((m) => c.modalities.includes(m)) || c.modalities[0];
    try {
      const [vol, seg] = await Promise.all([
        fetchNifti(`${tenantPath()}/cases/${c.case_id}/volumes/${first}`),
        fetchNifti(a.segmentation_url),
      ]);
      if (seq !== openSeq) return;
      setupGeometry(vol, seg);
      addVolume(first, vol);
      view.modality = first;
      sel.value = first;
      applyWindow();
      layoutPlanes(); // sizes the canvases and draws the planes
      view.firstRenderMs = Math.round(performance.now() - started);
      $('open-time').textContent = `opened in ${view.firstRenderMs} ms`;
      console.info(`gmmas viewer: case ${c.case_id} first planes in ${view.firstRenderMs} ms`);
      const rest = c.modalities.filter((m) => m !== first).map(async (m) => {
        const v = await fetchNifti(`${tenantPath()}/cases/${c.case_id}/volumes/${m}`);
        if (seq === openSeq) addVolume(m, v);
      });
      if (a.uncertainty_url) {
        rest.push(fetchNifti(a.uncertainty_url).then((u) => { if (seq === openSeq) addUncertainty(u); }));
      }
      await Promise.all(rest);
      if (seq !== openSeq) return;
      view.allLoadedMs = Math.round(performance.now() - started);
      $('open-time').textContent = `opened in ${view.firstRenderMs} ms (all layers ${view.allLoadedMs} ms)`;
    } catch (e) {
      if (seq === openSeq && e.status !== 401) $('case-error').textContent = `Could not load the images: ${e.message}`;
    }
  }

  function setupGeometry(vol, seg) {
    view.dims = vol.dims;
    view.pixdim = vol.pixdim;
    view.orient = orientation(vol.affine);
    if (seg.dims.join() !== vol.dims.join()) throw new Error(`segmentation ${seg.dims.join('×')} is not on the image grid ${vol.dims.join('×')}`);
    view.seg = seg;
    const n = seg.data.length;
    view.labels = new Uint8Array(n);
    for (let i = 0; i < n; i++) view.labels[i] = seg.data[i];
    view.saved = view.labels.slice();
    view.cross = tumourCentre(view.labels, view.dims);
  }

  // The crosshair starts at the centre of the tumour (or of the volume when there is none).
  function tumourCentre(labels, dims) {
    const [nx, ny] = dims;
    let si = 0, sj = 0, sk = 0, count = 0;
    for (let idx = 0; idx < labels.length; idx++) {
      if (labels[idx]) {
        const i = idx % nx;
        const j = ((idx - i) / nx) % ny;
        const k = Math.floor(idx / (nx * ny));
        si += i; sj += j; sk += k; count++;
      }
    }
    if (!count) return dims.map((d) => Math.floor(d / 2));
    return [Math.round(si / count), Math.round(sj / count), Math.round(sk / count)];
  }

  function addVolume(m, vol) {
    if (vol.dims.join() !== view.dims.join()) throw new Error(`${m} is not on the case's grid`);
    view.vols[m] = vol;
    view.windows[m] = autoWindow(vol.data);
    const o = [...$('sequence-select').options].find((x) => x.value === m);
    if (o) {
      o.disabled = false;
      o.textContent = SEQUENCE_NAMES[m] || m;
    }
  }

  function addUncertainty(u) {
    if (u.dims.join() !== view.dims.join()) return;
    view.unc = u.data;
    const w = autoWindow(u.data);
    view.uncMax = w.level + w.width / 2 || 1;
    if ($('uncertainty-toggle').checked) renderAll();
  }

  // Window from the 0.5th to the 99.5th percentile of the non-zero voxels (a sample of them).
  function autoWindow(data) {
    const step = Math.max(1, Math.floor(data.length / 200000));
    const sample = [];
    for (let i = 0; i < data.length; i += step) if (data[i] !== 0) sample.push(data[i]);
    if (!sample.length) return { level: 0.5, width: 1 };
    sample.sort((x, y) => x - y);
    const lo = sample[Math.floor(sample.length * 0.005)];
    const hi = sample[Math.min(sample.length - 1, Math.floor(sample.length * 0.995))];
    const width = Math.max(hi - lo, 1e-6);
    return { level: lo + width / 2, width };
  }

  function applyWindow() {
    const w = view.windows[view.modality];
    $('window-width').value = +w.width.toPrecision(4);
    $('window-level').value = +w.level.toPrecision(4);
  }

  // ---------- planes ----------

  // Per plane: canvas size and how a screen pixel (x, y) maps to a voxel index.
  function planeGeometry(p) {
    const ax = PLANE_AXES[p];
    const dims = view.dims;
    const strides = [1, dims[0], dims[0] * dims[1]];
    const fixed = view.orient[ax.fixed];
    const col = view.orient[ax.col];
    const row = view.orient[ax.row];
    // Screen right / down go towards decreasing world coordinates.
    const colFlip = col.sign > 0;
    const rowFlip = row.sign > 0;
    return {
      width: dims[col.axis], height: dims[row.axis], fixed: fixed.axis, col: col.axis, row: row.axis,
      colFlip, rowFlip, strides,
      mmWidth: dims[col.axis] * view.pixdim[col.axis], mmHeight: dims[row.axis] * view.pixdim[row.axis],
    };
  }

  function pixelToVoxel(p, x, y) {
    const g = view.geometry[p];
    const v = view.cross.slice();
    v[g.col] = g.colFlip ? g.width - 1 - x : x;
    v[g.row] = g.rowFlip ? g.height - 1 - y : y;
    return v;
  }

  function voxelToPixel(p, v) {
    const g = view.geometry[p];
    return { x: g.colFlip ? g.width - 1 - v[g.col] : v[g.col], y: g.rowFlip ? g.height - 1 - v[g.row] : v[g.row] };
  }

  function layoutPlanes() {
    for (const p of PLANES) {
      const g = planeGeometry(p);
      view.geometry[p] = g;
      const canvas = $(`plane-${p}`);
      canvas.width = g.width;
      canvas.height = g.height;
      g.ctx = canvas.getContext('2d', { willReadFrequently: true });
      g.image = g.ctx.createImageData(g.width, g.height);
    }
    sizePlanes();
  }

  // Display size: the physical aspect (mm), fitted in the plane's box.
  function sizePlanes() {
    if (!view || !view.dims) return;
    for (const p of PLANES) {
      const g = view.geometry[p];
      const canvas = $(`plane-${p}`);
      const box = canvas.parentElement.clientWidth || 300;
      const scale = Math.min(box / g.mmWidth, box / g.mmHeight);
      g.cssWidth = Math.max(1, Math.floor(g.mmWidth * scale));
      g.cssHeight = Math.max(1, Math.floor(g.mmHeight * scale));
      canvas.style.width = `${g.cssWidth}px`;
      canvas.style.height = `${g.cssHeight}px`;
      const cross = $(`cross-${p}`);
      const dpr = window.devicePixelRatio || 1;
      cross.width = Math.round(g.cssWidth * dpr);
      cross.height = Math.round(g.cssHeight * dpr);
      cross.style.width = `${g.cssWidth}px`;
      cross.style.height = `${g.cssHeight}px`;
    }
    if (view.modality) renderAll();
  }

  let frame = 0;
  function scheduleRender() {
    if (!frame) frame = requestAnimationFrame(() => { frame = 0; renderAll(); });
  }

  function renderAll() {
    if (!view || !view.modality) return;
    for (const p of PLANES) renderPlane(p);
    const idx = view.cross[0] + view.dims[0] * (view.cross[1] + view.dims[1] * view.cross[2]);
    $('crosshair').textContent = `(${view.cross.join(', ')})`;
    $('voxel-value').textContent = `${+Number(view.vols[view.modality].data[idx]).toPrecision(5)}`;
    const l = view.labels[idx];
    $('voxel-label').textContent = `${l} ${LABEL_NAMES[l] || ''}`;
  }

  function renderPlane(p) {
    const g = view.geometry[p];
    const data = view.vols[view.modality].data;
    const labels = view.labels;
    const unc = $('uncertainty-toggle').checked ? view.unc : null;
    const uncScale = 1 / (view.uncMax || 1);
    const showSeg = $('overlay-toggle').checked;
    const alpha = Number($('opacity').value) / 100;
    const width = Number($('window-width').value) || 1;
    const level = Number($('window-level').value) || 0;
    const lo = level - width / 2;
    const gain = 255 / width;
    const s = g.strides;
    const colStep = g.colFlip ? -s[g.col] : s[g.col];
    const rowStep = g.rowFlip ? -s[g.row] : s[g.row];
    let rowStart = view.cross[g.fixed] * s[g.fixed]
      + (g.colFlip ? (g.width - 1) * s[g.col] : 0) + (g.rowFlip ? (g.height - 1) * s[g.row] : 0);
    const px = g.image.data;
    let o = 0;
    for (let y = 0; y < g.height; y++, rowStart += rowStep) {
      let idx = rowStart;
      for (let x = 0; x < g.width; x++, idx += colStep) {
        let v = (data[idx] - lo) * gain;
        v = v < 0 ? 0 : v > 255 ? 255 : v;
        let r = v, gr = v, b = v;
        if (unc) {
          let t = unc[idx] * uncScale;
          if (t > 0.02) {
            t = t > 1 ? 1 : t;
            const ua = 0.75 * t;
            r += (heatR(t) - r) * ua;
            gr += (heatG(t) - gr) * ua;
            b += (heatB(t) - b) * ua;
          }
        }
        const l = showSeg ? labels[idx] : 0;
        if (l) {
          const c = LABEL_RGB[l];
          if (c) {
            r += (c[0] - r) * alpha;
            gr += (c[1] - gr) * alpha;
            b += (c[2] - b) * alpha;
          }
        }
        px[o] = r; px[o + 1] = gr; px[o + 2] = b; px[o + 3] = 255;
        o += 4;
      }
    }
    g.ctx.putImageData(g.image, 0, 0);
    drawCross(p);
  }

  // Uncertainty colours: purple (low) through orange to pale yellow (high).
  function heatR(t) { return t < 0.5 ? 80 + 350 * t : 255; }
  function heatG(t) { return t < 0.5 ? 160 * t : 80 + 350 * (t - 0.5); }
  function heatB(t) { return t < 0.5 ? 160 - 320 * t : 320 * (t - 0.5); }

  function drawCross(p) {
    const g = view.geometry[p];
    const canvas = $(`cross-${p}`);
    const ctx = canvas.getContext('2d');
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const sx = canvas.width / g.width;
    const sy = canvas.height / g.height;
    const { x, y } = voxelToPixel(p, view.cross);
    const cx = (x + 0.5) * sx;
    const cy = (y + 0.5) * sy;
    // Lines stop short of the crosshair voxel so that it stays visible.
    const gap = Math.max(sx, sy) * 2 + 4;
    ctx.strokeStyle = 'rgba(80, 200, 255, 0.85)';
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(0, cy); ctx.lineTo(cx - gap, cy);
    ctx.moveTo(cx + gap, cy); ctx.lineTo(canvas.width, cy);
    ctx.moveTo(cx, 0); ctx.lineTo(cx, cy - gap);
    ctx.moveTo(cx, cy + gap); ctx.lineTo(cx, canvas.height);
    ctx.stroke();
    const [left, right, top, bottom] = PLANE_AXES[p].letters;
    const fs = Math.max(11, Math.round(canvas.width / 28));
    ctx.font = `${fs}px sans-serif`;
    ctx.fillStyle = 'rgba(255, 255, 255, 0.8)';
    ctx.textBaseline = 'middle';
    ctx.textAlign = 'left';
    ctx.fillText(left, 4, canvas.height / 2);
    ctx.textAlign = 'right';
    ctx.fillText(right, canvas.width - 4, canvas.height / 2);
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    ctx.fillText(top, canvas.width / 2, 4);
    ctx.textBaseline = 'bottom';
    ctx.fillText(bottom, canvas.width / 2, canvas.height - 4);
    ctx.textAlign = 'left';
    ctx.fillText(`${view.cross[g.fixed] + 1}/${view.dims[g.fixed]}`, 4, canvas.height - 4);
  }

  function eventPixel(p, ev) {
    const g = view.geometry[p];
    const rect = ev.target.getBoundingClientRect();
    const x = Math.floor(((ev.clientX - rect.left) / rect.width) * g.width);
    const y = Math.floor(((ev.clientY - rect.top) / rect.height) * g.height);
    return { x: Math.min(g.width - 1, Math.max(0, x)), y: Math.min(g.height - 1, Math.max(0, y)) };
  }

  function setCrosshair(v) {
    view.cross = v.map((c, i) => Math.min(view.dims[i] - 1, Math.max(0, Math.round(c))));
    renderAll();
  }

  function paint(p, x, y) {
    const g = view.geometry[p];
    const label = Number($('paint-label').value);
    const radius = Math.max(0, Math.min(20, Math.round(Number($('brush-radius').value) || 0)));
    const [nx, ny] = view.dims;
    let changed = 0;
    for (let dy = -radius; dy <= radius; dy++) {
      for (let dx = -radius; dx <= radius; dx++) {
        if (dx * dx + dy * dy > radius * radius) continue;
        const px = x + dx;
        const py = y + dy;
        if (px < 0 || py < 0 || px >= g.width || py >= g.height) continue;
        const v = pixelToVoxel(p, px, py);
        const idx = v[0] + nx * (v[1] + ny * v[2]);
        if (view.labels[idx] !== label) {
          view.labels[idx] = label;
          changed++;
        }
      }
    }
    if (changed) {
      view.edits += changed;
      $('seg-save').disabled = false;
      $('seg-status').textContent = `${view.edits} voxels changed, not saved`;
      scheduleRender();
    }
  }

  function attachPlaneEvents() {
    for (const p of PLANES) {
      const cross = $(`cross-${p}`);
      let drag = null;
      cross.addEventListener('pointerdown', (ev) => {
        if (!view || !view.modality) return;
        ev.preventDefault();
        cross.setPointerCapture(ev.pointerId);
        const { x, y } = eventPixel(p, ev);
        if (ev.shiftKey || ev.button === 2) {
          drag = { mode: 'window', x0: ev.clientX, y0: ev.clientY, w: view.windows[view.modality] && { ...view.windows[view.modality] } };
        } else if ($('paint-toggle').checked) {
          drag = { mode: 'paint' };
          paint(p, x, y);
        } else {
          drag = { mode: 'cross' };
          setCrosshair(pixelToVoxel(p, x, y));
        }
      });
      cross.addEventListener('pointermove', (ev) => {
        if (!drag || !view || !view.modality) return;
        const { x, y } = eventPixel(p, ev);
        if (drag.mode === 'paint') paint(p, x, y);
        else if (drag.mode === 'cross') { view.cross = pixelToVoxel(p, x, y); scheduleRender(); }
        else if (drag.mode === 'window' && drag.w) {
          const w = view.windows[view.modality];
          w.width = Math.max(1e-6, drag.w.width * Math.exp((ev.clientX - drag.x0) / 200));
          w.level = drag.w.level - ((ev.clientY - drag.y0) / 200) * drag.w.width;
          applyWindow();
          scheduleRender();
        }
      });
      const end = () => { drag = null; };
      cross.addEventListener('pointerup', end);
      cross.addEventListener('pointercancel', end);
      cross.addEventListener('contextmenu', (ev) => ev.preventDefault());
      cross.addEventListener('wheel', (ev) => {
        if (!view || !view.modality) return;
        ev.preventDefault();
        const g = view.geometry[p];
        const v = view.cross.slice();
        v[g.fixed] += ev.deltaY > 0 ? -1 : 1;
        setCrosshair(v);
      }, { passive: false });
    }
  }

  async function saveSegmentation() {
    const seq = openSeq;
    $('seg-save').disabled = true;
    $('seg-status').textContent = 'Saving…';
    try {
      const body = await encodeLabels(view.seg, view.labels);
      const stored = await apiJson(`${tenantPath()}/cases/${view.id}/labels/segmentation`, {
        method: 'PUT', headers: { 'Content-Type': 'application/gzip' }, body,
      });
      if (seq !== openSeq) return;
      view.saved = view.labels.slice();
      view.edits = 0;
      $('seg-status').textContent = `Saved: corrected segmentation sha256 ${stored.segmentation_sha256}`;
      $('seg-status').dataset.sha256 = stored.segmentation_sha256 || '';
    } catch (e) {
      if (seq !== openSeq) return;
      $('seg-save').disabled = false;
      if (e.status !== 401) $('seg-status').textContent = `Not saved: ${e.message}`;
    }
  }

  // ---------- results ----------

  function renderResults(c) {
    const a = c.analysis;
    $('model-version').textContent = a.model_version;
    const missing = a.missing_modalities || [];
    $('missing').textContent = missing.length
      ? `Missing sequences: ${missing.map((m) => SEQUENCE_NAMES[m] || m).join(', ')} — analysed without them.`
      : 'All four sequences present.';
    $('missing').dataset.missing = missing.join(',');
    const r = a.regions;
    const tbody = $('regions').tBodies[0];
    tbody.replaceChildren();
    const rows = [
      ['ncr', 'NCR necrotic core', r.ncr_ml, r.ncr_fraction, 1],
      ['ed', 'ED edema', r.ed_ml, r.ed_fraction, 2],
      ['et', 'ET enhancing tumour', r.et_ml, r.et_fraction, 4],
      ['wt', 'WT whole tumour', r.wt_ml, null, 0],
      ['tc', 'TC tumour core', r.tc_ml, null, 0],
    ];
    for (const [key, name, ml, frac, label] of rows) {
      const tr = el('tr');
      const nameCell = el('td');
      if (label) nameCell.append(el('span', `swatch label-${label}`));
      nameCell.append(document.createTextNode(` ${name}`));
      const mlCell = el('td', '', ml.toFixed(2));
      mlCell.dataset.testid = `region-${key}_ml`;
      mlCell.dataset.value = String(ml);
      const fracCell = el('td', '', frac == null ? '' : `${(frac * 100).toFixed(1)} %`);
      if (frac != null) {
        fracCell.dataset.testid = `region-${key}_fraction`;
        fracCell.dataset.value = String(frac);
      }
      tr.append(nameCell, mlCell, fracCell);
      tbody.append(tr);
    }
    const probs = $('probabilities');
    probs.replaceChildren();
    const std = a.probabilities_std || null;
    for (const [key, name] of PROBABILITIES) {
      const p = a.probabilities[key];
      const s = std && typeof std[key] === 'number' ? std[key] : null;
      const row = el('div', 'prob-row');
      const value = el('span', '', `${(p * 100).toFixed(1)} %${s != null ? ` ± ${(s * 100).toFixed(1)}` : ''}`);
      value.dataset.testid = `prob-${key}`;
      value.dataset.value = String(p);
      if (s != null) value.dataset.std = String(s);
      row.append(el('span', '', name), value);
      const bar = el('div', 'bar');
      const fill = el('div', 'fill');
      fill.style.width = `${p * 100}%`;
      bar.append(fill);
      if (s != null) {
        const lo = Math.max(0, p - s);
        const hi = Math.min(1, p + s);
        const err = el('div', 'err');
        err.style.left = `${lo * 100}%`;
        err.style.width = `${(hi - lo) * 100}%`;
        const capL = el('div', 'err-cap');
        capL.style.left = `calc(${lo * 100}% - 1px)`;
        const capR = el('div', 'err-cap');
        capR.style.left = `calc(${hi * 100}% - 1px)`;
        bar.append(err, capL, capR);
      }
      probs.append(row, bar);
    }
    $('mc-note').textContent = std
      ? `Bars: probability ± one standard deviation over ${a.mc_passes} MC-Dropout passes.`
      : 'One deterministic pass: no uncertainty estimate for the probabilities.';
  }

  function renderLabelForm() {
    const box = $('label-fields');
    box.replaceChildren();
    for (const [key, name] of PROBABILITIES) {
      const label = el('label', '', name);
      const sel = el('select');
      sel.id = `label-${key}`;
      sel.dataset.testid = `label-${key}`;
      for (const [v, t] of [['', 'unknown'], ['true', 'yes'], ['false', 'no']]) {
        const o = el('option', '', t);
        o.value = v;
        sel.append(o);
      }
      label.append(sel);
      box.append(label);
    }
    $('label-author').value = session.claims ? session.claims.sub : '';
    $('labels-status').textContent = '';
  }

  async function saveLabels(ev) {
    ev.preventDefault();
    const seq = openSeq;
    const body = { author: $('label-author').value.trim() };
    for (const [key] of PROBABILITIES) {
      const v = $(`label-${key}`).value;
      body[key] = v === '' ? null : v === 'true';
    }
    $('labels-save').disabled = true;
    $('labels-status').textContent = 'Saving…';
    try {
      const stored = await apiJson(`${tenantPath()}/cases/${view.id}/labels`, {
        method: 'PUT', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
      });
      if (seq !== openSeq) return;
      const set = PROBABILITIES.filter(([k]) => stored.classes[k] != null)
        .map(([k, name]) => `${name}: ${stored.classes[k] ? 'yes' : 'no'}`);
      $('labels-status').textContent = `Saved by ${stored.classes.author}${set.length ? ` — ${set.join('; ')}` : ' (all unknown)'}`;
    } catch (e) {
      if (seq === openSeq && e.status !== 401) $('labels-status').textContent = `Not saved: ${e.message}`;
    } finally {
      $('labels-save').disabled = false;
    }
  }

  async function loadReport(c, seq) {
    const box = $('report');
    box.replaceChildren(el('p', 'muted', 'Loading the report…'));
    let report;
    try {
      report = await apiJson(`${tenantPath()}/cases/${c.case_id}/report`);
    } catch (e) {
      if (seq !== openSeq || e.status === 401) return;
      box.replaceChildren(el('p', 'muted', e.status === 404
        ? 'The report is not available yet.'
        : `The report is not available (${e.message}).`));
      box.dataset.state = 'absent';
      return;
    }
    if (seq !== openSeq) return;
    box.dataset.state = 'present';
    box.replaceChildren();
    if (typeof report.summary === 'string') box.append(el('h4', '', 'Summary'), el('p', 'report-text', report.summary));
    if (report.chart && typeof report.chart === 'object') {
      const table = el('table', 'report-chart');
      const head = el('tr');
      head.append(el('th', '', ''), el('th', '', 'Prognostic assessment'), el('th', '', 'Diagnostic opinion'));
      table.append(head);
      for (const [name, row] of Object.entries(report.chart)) {
        const tr = el('tr');
        tr.append(el('th', '', humanize(name)), el('td', 'report-text', cellText(row.prognostic_assessment)),
          el('td', 'report-text', cellText(row.diagnostic_opinion)));
        table.append(tr);
      }
      box.append(el('h4', '', 'Chart'), table);
    }
    if (report.treatment) box.append(el('h4', '', 'Treatment'), el('p', 'report-text', cellText(report.treatment)));
    for (const [k, v] of Object.entries(report)) {
      if (['summary', 'chart', 'treatment', 'disclaimer'].includes(k)) continue;
      box.append(el('h4', '', humanize(k)), el('p', 'report-text', typeof v === 'string' ? v : JSON.stringify(v, null, 1)));
    }
    if (report.disclaimer) box.append(el('p', 'caveat', report.disclaimer));
  }

  function cellText(cellValue) {
    if (!cellValue) return '';
    if (typeof cellValue === 'string') return cellValue;
    const cites = Array.isArray(cellValue.cites) && cellValue.cites.length ? ` [${cellValue.cites.join(', ')}]` : '';
    return `${cellValue.text || ''}${cites}`;
  }

  // ---------- helpers ----------

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }
  function cell(child) {
    const td = document.createElement('td');
    td.append(child);
    return td;
  }
  function humanize(k) {
    return k.replace(/_/g, ' ').replace(/^./, (c) => c.toUpperCase());
  }
  function fmtTime(t) {
    return t ? new Date(t).toLocaleString() : '';
  }
  function fmtBytes(n) {
    return n > 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${Math.ceil(n / 1024)} KiB`;
  }
  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  // ---------- wiring ----------

  function wire() {
    $('login-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      try {
        logIn($('token-input').value);
        $('login-error').textContent = '';
        route();
      } catch (e) {
        $('login-error').textContent = `Cannot log in: ${e.message}`;
      }
    });
    $('logout').addEventListener('click', () => logOut('Logged out.'));
    window.addEventListener('hashchange', route);
    $('case-search').addEventListener('input', renderCases);
    $('status-filter').addEventListener('change', loadCases);
    $('refresh-cases').addEventListener('click', loadCases);
    $('back-to-cases').addEventListener('click', () => { location.hash = '#/cases'; });

    const zone = $('drop-zone');
    zone.addEventListener('dragover', (ev) => { ev.preventDefault(); zone.classList.add('over'); });
    zone.addEventListener('dragleave', () => zone.classList.remove('over'));
    zone.addEventListener('drop', async (ev) => {
      ev.preventDefault();
      zone.classList.remove('over');
      chooseFiles(await filesFromDrop(ev.dataTransfer));
    });
    $('file-input').addEventListener('change', (ev) => chooseFiles([...ev.target.files]));
    $('folder-input').addEventListener('change', (ev) => chooseFiles([...ev.target.files]));
    // A reference typed by hand is kept; an emptied one is proposed again from the file names.
    $('case-ref').addEventListener('input', () => {
      upload.refEdited = $('case-ref').value.trim() !== '';
      updateUploadButton();
    });
    $('upload-button').addEventListener('click', doUpload);

    $('sequence-select').addEventListener('change', (ev) => {
      if (!view || !view.vols[ev.target.value]) return;
      view.modality = ev.target.value;
      applyWindow();
      renderAll();
    });
    for (const id of ['overlay-toggle', 'opacity', 'window-width', 'window-level']) {
      $(id).addEventListener('input', () => {
        if (view && view.modality && (id === 'window-width' || id === 'window-level')) {
          const w = view.windows[view.modality];
          w.width = Number($('window-width').value) || w.width;
          w.level = Number($('window-level').value);
        }
        scheduleRender();
      });
    }
    $('uncertainty-toggle').addEventListener('change', (ev) => {
      $('uncertainty-legend').hidden = !ev.target.checked;
      scheduleRender();
    });
    $('window-auto').addEventListener('click', () => {
      if (!view || !view.modality) return;
      view.windows[view.modality] = autoWindow(view.vols[view.modality].data);
      applyWindow();
      renderAll();
    });
    $('paint-toggle').addEventListener('change', (ev) => {
      for (const s of document.querySelectorAll('.stack')) s.classList.toggle('painting', ev.target.checked);
    });
    $('seg-undo').addEventListener('click', () => {
      if (!view || !view.saved) return;
      view.labels.set(view.saved);
      view.edits = 0;
      $('seg-save').disabled = true;
      $('seg-status').textContent = 'Edits undone.';
      renderAll();
    });
    $('seg-save').addEventListener('click', saveSegmentation);
    $('labels-form').addEventListener('submit', saveLabels);
    attachPlaneEvents();
    window.addEventListener('resize', () => sizePlanes());
  }

  // A small hook for browser tests: read what is drawn, move the crosshair.
  window.gmmasViewer = {
    get ready() { return !!(view && view.firstRenderMs != null); },
    get allLoaded() { return !!(view && view.allLoadedMs != null); },
    get timings() { return view ? { firstRenderMs: view.firstRenderMs, allLoadedMs: view.allLoadedMs } : null; },
    get crosshair() { return view ? view.cross.slice() : null; },
    get dims() { return view ? view.dims.slice() : null; },
    get modality() { return view ? view.modality : null; },
    setCrosshair(v) { setCrosshair(v); return view.cross.slice(); },
    labelAt(v) { return view.labels[v[0] + view.dims[0] * (v[1] + view.dims[1] * v[2])]; },
    voxelToPixel(p, v) { return voxelToPixel(p, v); },
    // The canvas pixel (plane canvas coordinates) at a voxel, in CSS pixels of the page.
    voxelToClient(p, v) {
      const { x, y } = voxelToPixel(p, v);
      const g = view.geometry[p];
      const rect = $(`cross-${p}`).getBoundingClientRect();
      return { x: rect.left + ((x + 0.5) / g.width) * rect.width, y: rect.top + ((y + 0.5) / g.height) * rect.height };
    },
    // What is drawn at a plane canvas pixel, and the label whose colour it is (at full opacity).
    pixelAt(p, x, y) {
      const d = view.geometry[p].ctx.getImageData(x, y, 1, 1).data;
      const rgba = [d[0], d[1], d[2], d[3]];
      let label = null;
      for (const [l, c] of Object.entries(LABEL_RGB)) {
        if (c[0] === d[0] && c[1] === d[1] && c[2] === d[2]) label = Number(l) === 3 ? 4 : Number(l);
      }
      return { rgba, label };
    },
    labelColours: LABEL_RGB,
  };

  document.addEventListener('DOMContentLoaded', () => {
    wire();
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) {
      try {
        logIn(saved);
      } catch (e) {
        logOut(`Log in again: ${e.message}.`);
        return;
      }
    }
    route();
  });
})();
