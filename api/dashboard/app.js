/*
 * retune dashboard — files, fine-tuning jobs with live curves, models and a
 * side-by-side playground, all through the public API (/v1/...), exactly
 * as any client calls it. Plain JavaScript, no framework, nothing loaded
 * from elsewhere; charts are drawn by hand on <canvas>.
 *
 * The API key the user types is kept in localStorage and sent as
 * "Authorization: Bearer <key>"; a 401 shows #key-prompt. Every other
 * failed request shows its message in #error.
 */
'use strict';

(() => {
  const KEY_STORE = 'retune.apiKey';
  const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
  const JOB_POLL_MS = 1000;
  const STREAM_RETRY_MS = 2000;
  const CHECKPOINTS_SHOWN = 10;  /* the newest; a button shows the rest */

  const state = {
    files: [],
    models: [],
    jobs: new Map(),       /* id -> job object, from the list */
    jobsTimer: 0,
    selected: null,        /* the job shown in #job-detail */
    stream: null,          /* its events stream's AbortController */
    series: null,          /* its curves */
    seenEvents: new Set(),
    drawQueued: false,
    pending: 0,            /* plain requests under way */
  };

  /* ---- small DOM helpers ------------------------------------------------- */

  const $ = (sel) => document.querySelector(sel);

  /* el('td', {class: 'x', dataset: {id}}, child, 'text', ...) */
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'dataset') Object.assign(e.dataset, v);
      else if (k === 'onclick') e.addEventListener('click', v);
      else if (k === 'hidden') e.hidden = true;
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  function formatTime(seconds) {
    if (!seconds) return '';
    return new Date(seconds * 1000).toLocaleString();
  }

  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  }

  function formatNumber(v, digits = 4) {
    if (typeof v !== 'number') return v === null || v === undefined ? '' : String(v);
    return Number.isInteger(v) ? String(v) : v.toFixed(digits);
  }

  /* A button that asks once more before it acts (no blocking dialogs). */
  function confirmButton(label, action) {
    const b = el('button', {type: 'button', class: 'danger'}, label);
    let armed = 0;
    b.addEventListener('click', (ev) => {
      ev.stopPropagation();
      if (!armed) {
        b.textContent = 'Sure?';
        armed = setTimeout(() => { armed = 0; b.textContent = label; }, 3000);
        return;
      }
      clearTimeout(armed);
      armed = 0;
      b.disabled = true;
      Promise.resolve(action()).finally(() => { b.disabled = false; b.textContent = label; });
    });
    return b;
  }

  /* ---- errors and the API key -------------------------------------------- */

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function showError(message) {
    $('#error-text').textContent = message;
    $('#error').hidden = false;
  }

  function clearError() {
    $('#error-text').textContent = '';
    $('#error').hidden = true;
  }

  /* Shows what went wrong: a 401 as the key prompt, anything else in #error. */
  function report(err) {
    if (err && err.name === 'AbortError') return;
    if (err instanceof ApiError && err.status === 401) {
      showKeyPrompt(err.message);
      return;
    }
    showError(err && err.message ? err.message : String(err));
  }

  function showKeyPrompt(message) {
    const had = apiKey();
    $('#key-prompt-text').textContent = had
      ? `The saved API key was refused (${message}). Enter a valid key at the top right and press Save.`
      : 'Enter it in the "API key" field at the top right and press Save; it is kept in this browser only.';
    $('#key-prompt').hidden = false;
    $('#api-key').focus();
  }

  function apiKey() {
    return localStorage.getItem(KEY_STORE) || '';
  }

  /* The error message of a failed response: OpenAI's {"error": {"message"}}. */
  async function errorMessage(resp) {
    const text = await resp.text().catch(() => '');
    try {
      const body = JSON.parse(text);
      if (body && body.error && body.error.message) return body.error.message;
    } catch (e) { /* not JSON: the text itself */ }
    return text.trim() || `${resp.status} ${resp.statusText}`;
  }

  /*
   * Calls the API. options: json (a body to send as JSON), form (FormData),
   * signal, raw (return the Response, for streams). Resolves to the parsed
   * JSON; rejects with an ApiError whose message names the request and says
   * what the server said.
   */
  async function api(method, path, options = {}) {
    const headers = {};
    const key = apiKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    if (options.headers) Object.assign(headers, options.headers);
    let body;
    if (options.json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(options.json);
    } else if (options.form) {
      body = options.form;
    }
    if (!options.raw) setPending(+1);
    try {
      let resp;
      try {
        resp = await fetch(path, {method, headers, body, signal: options.signal, cache: 'no-store'});
      } catch (e) {
        if (e.name === 'AbortError') throw e;
        throw new ApiError(0, `${method} ${path}: the server cannot be reached (${e.message})`);
      }
      if (!resp.ok) {
        const msg = await errorMessage(resp);
        throw new ApiError(resp.status, `${method} ${path}: ${msg}`);
      }
      $('#key-prompt').hidden = true;
      return options.raw ? resp : await resp.json();
    } finally {
      if (!options.raw) setPending(-1);
    }
  }

  /* How many plain requests are under way, in <html data-pending>: 0 when
   * every list shown is as the server last said (streams are not counted). */
  function setPending(delta) {
    state.pending += delta;
    document.documentElement.dataset.pending = String(state.pending);
  }

  /*
   * Reads a server-sent events body, calling onEvent({id, data}) for each
   * event; onEvent returning false stops reading. Resolves when the body
   * ends or reading stopped.
   */
  async function readEvents(resp, onEvent) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      buf += decoder.decode(value, {stream: true}).replace(/\r/g, '');
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const ev = parseEvent(block);
        if (ev && onEvent(ev) === false) {
          reader.cancel().catch(() => {});
          return;
        }
      }
    }
  }

  function parseEvent(block) {
    const data = [];
    let id = null;
    for (const line of block.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'data') data.push(value);
      else if (field === 'id') id = value;
    }
    return data.length ? {id, data: data.join('\n')} : null;
  }

  /* ---- tabs -------------------------------------------------------------- */

  const TAB_REFRESH = {
    files: () => refreshFiles(),
    jobs: () => Promise.all([refreshJobs(), refreshFiles(), refreshModels()]),
    models: () => refreshModels(),
    playground: () => refreshModels(),
  };

  /* Shows one section; refresh (default) reloads what it lists. */
  function showTab(name, refresh = true) {
    if (!TAB_REFRESH[name]) name = 'files';
    for (const b of document.querySelectorAll('#tabs button'))
      b.classList.toggle('active', b.dataset.tab === name);
    for (const s of document.querySelectorAll('section.tab')) s.hidden = s.id !== `tab-${name}`;
    if (location.hash !== `#${name}`) history.replaceState(null, '', `#${name}`);
    if (refresh) TAB_REFRESH[name]().catch(report);
  }

  /* Everything every tab lists (the selects of one tab come from the others). */
  function refreshAll() {
    return Promise.all([refreshFiles(), refreshModels(), refreshJobs()]).catch(report);
  }

  /* ---- files ------------------------------------------------------------- */

  async function refreshFiles() {
    const list = await api('GET', '/v1/files');
    state.files = list.data || [];
    renderFiles();
    renderFileSelects();
  }

  function renderFiles() {
    const tbody = $('#files-table tbody');
    tbody.replaceChildren();
    if (!state.files.length)
      tbody.append(el('tr', {}, el('td', {colspan: 7, class: 'empty'}, 'No files yet.')));
    for (const f of state.files) {
      const status = el('span', {class: `badge st-${f.status}`}, f.status);
      tbody.append(el('tr', {dataset: {id: f.id, filename: f.filename, status: f.status}},
        el('td', {class: 'id'}, f.id),
        el('td', {}, f.filename),
        el('td', {}, formatBytes(f.bytes)),
        el('td', {}, f.purpose),
        el('td', {}, status, f.status_details ? el('div', {class: 'muted'}, f.status_details) : null),
        el('td', {}, formatTime(f.created_at)),
        el('td', {class: 'actions'}, confirmButton('Delete', () => deleteFile(f.id)))));
    }
  }

  function renderFileSelects() {
    const usable = state.files.filter((f) => f.purpose === 'fine-tune' && f.status === 'processed');
    for (const [sel, optional] of [['#job-training', false], ['#job-validation', true]]) {
      const s = $(sel);
      const keep = s.value;
      s.replaceChildren();
      if (optional) s.append(el('option', {value: ''}, 'none'));
      else if (!usable.length) s.append(el('option', {value: ''}, 'upload a file first'));
      for (const f of usable) s.append(el('option', {value: f.id}, `${f.filename} (${f.id})`));
      if ([...s.options].some((o) => o.value === keep)) s.value = keep;
    }
  }

  async function uploadFiles(fileList) {
    const status = $('#upload-status');
    for (const file of fileList) {
      status.textContent = `Uploading ${file.name}…`;
      const form = new FormData();
      form.append('purpose', 'fine-tune');
      form.append('file', file, file.name);
      try {
        const f = await api('POST', '/v1/files', {form});
        if (f.status === 'error') {
          status.textContent = `${file.name} was stored as ${f.id} but cannot be trained on.`;
          showError(`${file.name}: ${f.status_details || 'the file is not valid fine-tuning data'}`);
        } else {
          status.textContent = `Uploaded ${file.name} as ${f.id}.`;
        }
      } catch (e) {
        status.textContent = `Upload of ${file.name} failed.`;
        report(e);
      }
    }
    await refreshFiles().catch(report);
  }

  async function deleteFile(id) {
    try {
      await api('DELETE', `/v1/files/${encodeURIComponent(id)}`);
      await refreshFiles();
    } catch (e) {
      report(e);
    }
  }

  function setupUpload() {
    const drop = $('#file-drop');
    const input = $('#file-input');
    input.addEventListener('change', () => {
      const files = [...input.files];
      input.value = '';
      if (files.length) uploadFiles(files);
    });
    drop.addEventListener('dragover', (ev) => {
      ev.preventDefault();
      drop.classList.add('over');
    });
    drop.addEventListener('dragleave', () => drop.classList.remove('over'));
    drop.addEventListener('drop', (ev) => {
      ev.preventDefault();
      drop.classList.remove('over');
      const files = [...(ev.dataTransfer ? ev.dataTransfer.files : [])];
      if (files.length) uploadFiles(files);
    });
  }

  /* ---- models ------------------------------------------------------------ */

  const KIND_ORDER = {base: 0, adapter: 1, full: 2, imported: 3, checkpoint: 4};

  async function refreshModels() {
    const list = await api('GET', '/v1/models');
    state.models = (list.data || []).slice().sort((a, b) =>
      ((KIND_ORDER[a.kind] ?? 9) - (KIND_ORDER[b.kind] ?? 9)) || ((b.created || 0) - (a.created || 0)));
    renderModels();
    renderModelSelects();
  }

  function baseModels() {
    return state.models.filter((m) => m.kind === 'base' || (!m.kind && !m.parent));
  }

  function renderModels() {
    const tbody = $('#models-table tbody');
    tbody.replaceChildren();
    const checkpoints = state.models.filter((m) => m.kind === 'checkpoint');
    const hidden = state.allModelCheckpoints ? new Set() : new Set(checkpoints.slice(CHECKPOINTS_SHOWN));
    for (const m of state.models) {
      if (hidden.has(m)) continue;
      const base = m.kind === 'base';
      const deletable = !base && m.kind !== 'checkpoint'; /* a checkpoint goes with its job */
      tbody.append(el('tr', {dataset: {id: m.id, kind: m.kind || ''}},
        el('td', {class: 'id'}, m.id),
        el('td', {}, el('span', {class: 'badge'}, m.kind || 'model')),
        el('td', {class: 'id'}, m.parent || ''),
        el('td', {}, m.owned_by || ''),
        el('td', {}, formatTime(m.created)),
        el('td', {class: 'actions'},
          base ? null : el('button', {type: 'button', class: 'try', onclick: () => tryModel(m.id)}, 'Playground'),
          deletable ? confirmButton('Delete', () => deleteModel(m.id)) : null)));
    }
    if (hidden.size) {
      const more = el('button', {type: 'button', class: 'more', onclick: () => {
        state.allModelCheckpoints = true;
        renderModels();
      }}, `Show all ${checkpoints.length} checkpoints`);
      tbody.append(el('tr', {}, el('td', {colspan: 6, class: 'empty'}, `${hidden.size} older checkpoints `, more)));
    }
  }

  function renderModelSelects() {
    const bases = baseModels();
    const jm = $('#job-model');
    const keep = jm.value;
    jm.replaceChildren(...bases.map((m) => el('option', {value: m.id}, m.id)));
    if (bases.some((m) => m.id === keep)) jm.value = keep;
    $('#pg-base-name').textContent = bases.length ? bases[0].id : '(no base model)';

    const pm = $('#pg-model');
    const keepPg = state.pendingTry || pm.value;
    const tuned = state.models.filter((m) => !bases.includes(m));
    pm.replaceChildren(...tuned.map((m) => el('option', {value: m.id}, `${m.id} (${m.kind || 'model'})`)));
    if (!tuned.length) pm.append(el('option', {value: ''}, 'no fine-tuned model yet'));
    if (tuned.some((m) => m.id === keepPg)) {
      pm.value = keepPg;
      state.pendingTry = null;
    }
    $('#pg-model-name').textContent = pm.value;
  }

  async function deleteModel(id) {
    try {
      await api('DELETE', `/v1/models/${encodeURIComponent(id)}`);
      await refreshModels();
    } catch (e) {
      report(e);
    }
  }

  function tryModel(id) {
    state.pendingTry = id;
    showTab('playground');
  }

  /* ---- jobs: the form ---------------------------------------------------- */

  /* "auto" / "" -> undefined (the server's default), else a number; throws on junk. */
  function hpValue(input, name, integer) {
    const v = input.value.trim();
    if (!v || v === 'auto') return v === 'auto' ? 'auto' : undefined;
    const n = Number(v);
    if (!Number.isFinite(n) || (integer && !Number.isInteger(n)))
      throw new Error(`${name} must be ${integer ? 'an integer' : 'a number'} or "auto", not "${v}".`);
    return n;
  }

  function jobBody() {
    const hp = {training_type: $('#job-method').value};
    const epochs = hpValue($('#job-epochs'), 'Epochs', true);
    const batch = hpValue($('#job-batch'), 'Batch size', true);
    const lr = hpValue($('#job-lr'), 'LR multiplier', false);
    if (epochs !== undefined) hp.n_epochs = epochs;
    if (batch !== undefined) hp.batch_size = batch;
    if (lr !== undefined) hp.learning_rate_multiplier = lr;
    if (hp.training_type === 'lora') {
      const r = hpValue($('#job-lora-r'), 'LoRA rank', true);
      if (typeof r === 'number') hp.lora_r = r;
      const targets = $('#job-targets').value;
      if (targets) hp.target_modules = targets === 'all-linear' ? targets : targets.split(',');
    }
    const extra = $('#job-extra').value.trim();
    if (extra) {
      let more;
      try {
        more = JSON.parse(extra);
      } catch (e) {
        throw new Error(`More hyperparameters must be a JSON object: ${e.message}`);
      }
      if (!more || typeof more !== 'object' || Array.isArray(more))
        throw new Error('More hyperparameters must be a JSON object, e.g. {"eval_interval": 10}.');
      Object.assign(hp, more);
    }
    const body = {
      model: $('#job-model').value,
      training_file: $('#job-training').value,
      method: {type: 'supervised', supervised: {hyperparameters: hp}},
    };
    if ($('#job-validation').value) body.validation_file = $('#job-validation').value;
    if ($('#job-suffix').value.trim()) body.suffix = $('#job-suffix').value.trim();
    return body;
  }

  async function createJob(ev) {
    ev.preventDefault();
    const button = $('#job-create');
    button.disabled = true;
    try {
      const job = await api('POST', '/v1/fine_tuning/jobs', {json: jobBody()});
      state.jobs.set(job.id, job);
      await refreshJobs();
      selectJob(job.id);
    } catch (e) {
      report(e);
    } finally {
      button.disabled = false;
    }
  }

  /* ---- jobs: the list ---------------------------------------------------- */

  async function refreshJobs() {
    clearTimeout(state.jobsTimer);
    try {
      const list = await api('GET', '/v1/fine_tuning/jobs?limit=100');
      state.jobs = new Map((list.data || []).map((j) => [j.id, j]));
      renderJobs();
      if (state.selected && state.jobs.has(state.selected)) renderJobDetail(state.jobs.get(state.selected));
      if (!state.selected) { /* nothing chosen yet: follow the newest job that is not over */
        const active = [...state.jobs.values()].find((j) => !TERMINAL.has(j.status));
        if (active) selectJob(active.id);
      }
    } finally {
      if ([...state.jobs.values()].some((j) => !TERMINAL.has(j.status)))
        state.jobsTimer = setTimeout(() => refreshJobs().catch(report), JOB_POLL_MS);
    }
  }

  /* Rows are kept and updated in place, so a click is never lost to a refresh. */
  function renderJobs() {
    const tbody = $('#jobs-table tbody');
    const rows = new Map([...tbody.querySelectorAll('tr[data-id]')].map((tr) => [tr.dataset.id, tr]));
    const empty = tbody.querySelector('tr.empty-row');
    if (empty) empty.remove();
    let at = null;
    for (const job of state.jobs.values()) {
      let tr = rows.get(job.id);
      rows.delete(job.id);
      if (!tr) tr = jobRow(job);
      updateJobRow(tr, job);
      if (at ? at.nextSibling !== tr : tbody.firstChild !== tr) {
        if (at) at.after(tr); else tbody.prepend(tr);
      }
      at = tr;
    }
    for (const tr of rows.values()) tr.remove();
    if (!state.jobs.size)
      tbody.append(el('tr', {class: 'empty-row'}, el('td', {colspan: 7, class: 'empty'}, 'No jobs yet.')));
  }

  function jobRow(job) {
    const act = (name, label) => el('button', {type: 'button', class: name, onclick: (ev) => {
      ev.stopPropagation();
      jobAction(job.id, name);
    }}, label);
    const tryIt = el('button', {type: 'button', class: 'try', onclick: (ev) => {
      ev.stopPropagation();
      const j = state.jobs.get(job.id);
      if (j && j.fine_tuned_model) tryModel(j.fine_tuned_model);
    }}, 'Playground');
    const tr = el('tr', {class: 'clickable', dataset: {id: job.id}},
      el('td', {class: 'id'}, job.id),
      el('td', {}, job.model),
      el('td', {class: 'status'}, el('span', {class: 'badge'})),
      el('td', {class: 'progress-cell'}, el('span', {class: 'progress'}, el('span')), ' ', el('span', {class: 'steps muted'})),
      el('td', {class: 'id model'}),
      el('td', {}, formatTime(job.created_at)),
      el('td', {class: 'actions'}, act('pause', 'Pause'), act('resume', 'Resume'), act('cancel', 'Cancel'), tryIt));
    tr.addEventListener('click', () => selectJob(job.id));
    return tr;
  }

  function updateJobRow(tr, job) {
    tr.dataset.status = job.status;
    tr.classList.toggle('selected', job.id === state.selected);
    const badge = tr.querySelector('.status .badge');
    badge.textContent = job.status;
    badge.className = `badge st-${job.status}`;
    const total = job.total_steps || 0;
    const step = job.status === 'succeeded' ? total : job.step || 0;
    tr.querySelector('.progress > span').style.width = total ? `${Math.min(100, (100 * step) / total)}%` : '0';
    tr.querySelector('.steps').textContent = total ? `${step}/${total}` : '';
    tr.querySelector('.model').textContent = job.fine_tuned_model && job.status === 'succeeded' ? job.fine_tuned_model : '';
    tr.querySelector('button.pause').hidden = job.status !== 'running';
    tr.querySelector('button.resume').hidden = job.status !== 'paused';
    tr.querySelector('button.cancel').hidden = TERMINAL.has(job.status);
    tr.querySelector('button.try').hidden = job.status !== 'succeeded' || !job.fine_tuned_model;
  }

  async function jobAction(id, action) {
    try {
      const job = await api('POST', `/v1/fine_tuning/jobs/${encodeURIComponent(id)}/${action}`);
      state.jobs.set(job.id, job);
      renderJobs();
      await refreshJobs();
      if (action === 'resume' && state.selected === id && !state.stream) openStream(id);
    } catch (e) {
      report(e);
    }
  }

  /* ---- jobs: one job's detail, curves and events -------------------------- */

  function newSeries() {
    return {totalSteps: 0, trainLoss: [], validLoss: [], trainAcc: [], validAcc: [], steps: new Set(), lastId: null};
  }

  function selectJob(id) {
    if (state.selected === id && state.stream) return;
    closeStream();
    state.selected = id;
    state.series = newSeries();
    state.seenEvents = new Set();
    state.allCheckpoints = false;
    $('#job-events').replaceChildren();
    $('#job-checkpoints tbody').replaceChildren();
    $('#job-detail').hidden = false;
    $('#job-detail-id').textContent = id;
    for (const tr of document.querySelectorAll('#jobs-table tbody tr[data-id]'))
      tr.classList.toggle('selected', tr.dataset.id === id);
    drawCharts();
    const job = state.jobs.get(id);
    if (job) renderJobDetail(job);
    api('GET', `/v1/fine_tuning/jobs/${encodeURIComponent(id)}`).then(renderJobDetail).catch(report);
    refreshCheckpoints(id).catch(report);
    openStream(id);
  }

  function closeStream() {
    if (state.stream) state.stream.abort();
    state.stream = null;
  }

  function setStreamState(text) {
    $('#job-stream-state').textContent = text;
    $('#job-detail').dataset.stream = text;
  }

  /*
   * Follows GET /v1/fine_tuning/jobs/{id}/events?stream=true: every event so
   * far, oldest first, then each new one; [DONE] when the job is over. A
   * stream cut short is reopened after the last event seen (Last-Event-ID).
   */
  async function openStream(id) {
    const ctl = new AbortController();
    state.stream = ctl;
    const series = state.series;
    const headers = series.lastId ? {'Last-Event-ID': series.lastId} : {};
    setStreamState('live');
    let finished = false;
    try {
      const resp = await api('GET', `/v1/fine_tuning/jobs/${encodeURIComponent(id)}/events?stream=true`,
        {raw: true, signal: ctl.signal, headers});
      await readEvents(resp, (ev) => {
        if (state.stream !== ctl) return false;
        if (ev.data === '[DONE]') {
          finished = true;
          return false;
        }
        if (ev.id) series.lastId = ev.id;
        try {
          addEvent(JSON.parse(ev.data));
        } catch (e) {
          showError(`The events stream sent something that is not JSON: ${ev.data.slice(0, 200)}`);
        }
        return true;
      });
    } catch (e) {
      if (e.name === 'AbortError' || state.stream !== ctl) return;
      report(e);
      if (e instanceof ApiError && e.status !== 0) { /* refused: retrying would not help */
        state.stream = null;
        setStreamState('closed');
        return;
      }
    }
    if (state.stream !== ctl) return;
    if (finished) {
      state.stream = null;
      setStreamState('finished');
      await Promise.all([refreshJobs(), refreshCheckpoints(id), refreshModels()]).catch(report);
      return;
    }
    setStreamState('reconnecting');
    setTimeout(() => { if (state.stream === ctl) openStream(id); }, STREAM_RETRY_MS);
  }

  function addEvent(e) {
    if (!e || !e.id || state.seenEvents.has(e.id)) return;
    state.seenEvents.add(e.id);
    const when = new Date((e.created_at || 0) * 1000).toLocaleTimeString();
    const li = el('li', {class: `lvl-${e.level || 'info'} type-${e.type || 'message'}`, dataset: {id: e.id, type: e.type || ''}},
      `${when} ${e.message || ''}`);
    const list = $('#job-events');
    list.prepend(li);
    while (list.children.length > 500) list.lastChild.remove();
    if (e.type === 'metrics' && e.data && typeof e.data.step === 'number') addMetrics(e.data);
  }

  function addMetrics(d) {
    const s = state.series;
    if (s.steps.has(d.step)) return;
    s.steps.add(d.step);
    const job = state.jobs.get(state.selected);
    if (job && (job.status === 'queued' || job.status === 'validating_files') && d.step < d.total_steps) {
      job.status = 'running'; /* the stream is ahead of the last poll */
      renderJobDetail(job);
    }
    if (typeof d.total_steps === 'number') s.totalSteps = Math.max(s.totalSteps, d.total_steps);
    const push = (arr, v) => { if (typeof v === 'number' && Number.isFinite(v)) arr.push([d.step, v]); };
    push(s.trainLoss, d.train_loss);
    push(s.validLoss, d.valid_loss);
    push(s.trainAcc, d.train_mean_token_accuracy);
    push(s.validAcc, d.valid_mean_token_accuracy);
    for (const arr of [s.trainLoss, s.validLoss, s.trainAcc, s.validAcc]) arr.sort((a, b) => a[0] - b[0]);
    if (!state.drawQueued) {
      state.drawQueued = true;
      requestAnimationFrame(() => {
        state.drawQueued = false;
        drawCharts();
      });
    }
  }

  async function refreshCheckpoints(id) {
    const list = await api('GET', `/v1/fine_tuning/jobs/${encodeURIComponent(id)}/checkpoints?limit=100`);
    if (state.selected !== id) return;
    const tbody = $('#job-checkpoints tbody');
    tbody.replaceChildren();
    const items = list.data || [];
    if (!items.length) tbody.append(el('tr', {}, el('td', {colspan: 5, class: 'empty'}, 'None yet.')));
    const shown = state.allCheckpoints ? items : items.slice(0, CHECKPOINTS_SHOWN);
    for (const c of shown) {
      const m = c.metrics || {};
      tbody.append(el('tr', {dataset: {id: c.id || ''}},
        el('td', {}, c.step_number),
        el('td', {class: 'id'}, c.fine_tuned_model_checkpoint),
        el('td', {}, formatNumber(m.train_loss)),
        el('td', {}, formatNumber(m.valid_loss ?? m.full_valid_loss)),
        el('td', {class: 'actions'}, el('button', {type: 'button', class: 'try',
          onclick: () => tryModel(c.fine_tuned_model_checkpoint)}, 'Playground'))));
    }
    if (shown.length < items.length || list.has_more) {
      const more = el('button', {type: 'button', class: 'more', onclick: () => {
        state.allCheckpoints = true;
        refreshCheckpoints(id).catch(report);
      }}, `Show all ${items.length}${list.has_more ? '+' : ''}`);
      tbody.append(el('tr', {}, el('td', {colspan: 5, class: 'empty'}, `${items.length - shown.length} older `, more)));
    }
  }

  /* Fields shown elsewhere or of no use here. */
  const HIDDEN_FIELDS = new Set(['object', 'id', 'method', 'integrations', 'status', 'hyperparameters',
    'error', 'retention', 'step', 'total_steps', 'trainable_params', 'total_params', 'trainable_percent']);
  const TIME_FIELDS = new Set(['created_at', 'finished_at', 'estimated_finish']);

  function renderJobDetail(job) {
    if (!job || job.id !== state.selected) return;
    state.jobs.set(job.id, job);
    const badge = $('#job-detail-status');
    badge.textContent = job.status;
    badge.className = `badge st-${job.status}`;
    $('#job-detail').dataset.status = job.status;
    if (job.total_steps && state.series) {
      const grew = job.total_steps > state.series.totalSteps;
      state.series.totalSteps = Math.max(state.series.totalSteps, job.total_steps);
      if (grew) drawCharts();
    }
    const dl = $('#job-fields');
    dl.replaceChildren();
    const row = (k, v) => { if (v !== '' && v !== undefined && v !== null) dl.append(el('dt', {}, k), el('dd', {dataset: {field: k}}, v)); };
    if (job.error) row('error', `${job.error.code || ''}: ${job.error.message || ''}${job.error.param ? ` (${job.error.param})` : ''}`);
    row('progress', job.total_steps ? `step ${job.step}/${job.total_steps}` : '');
    const hp = job.hyperparameters || {};
    row('hyperparameters', Object.entries(hp).map(([k, v]) => `${k}=${Array.isArray(v) ? v.join(',') : v}`).join('  '));
    if (job.total_params)
      row('parameters', `${job.trainable_params} trainable of ${job.total_params} (${formatNumber(job.trainable_percent, 2)}%)`);
    if (job.retention)
      row('retention', `${job.retention.file}: loss ${formatNumber(job.retention.loss_before)} before, ${formatNumber(job.retention.loss_after)} after`);
    for (const [k, v] of Object.entries(job)) {
      if (HIDDEN_FIELDS.has(k) || v === null || v === undefined || v === '') continue;
      if (Array.isArray(v) && !v.length) continue;
      if (TIME_FIELDS.has(k)) row(k, formatTime(v));
      else if (typeof v === 'object') row(k, Array.isArray(v) ? v.join(', ') : describeObject(v));
      else row(k, formatNumber(v));
    }
  }

  /* {a: 1, b: {c: 2}} -> "a=1  b.c=2": memory estimates and the like, whatever they hold. */
  function describeObject(o, prefix = '') {
    const parts = [];
    for (const [k, v] of Object.entries(o)) {
      if (v && typeof v === 'object' && !Array.isArray(v)) parts.push(describeObject(v, `${prefix}${k}.`));
      else parts.push(`${prefix}${k}=${k.endsWith('bytes') && typeof v === 'number' ? formatBytes(v) : formatNumber(v)}`);
    }
    return parts.join('  ');
  }

  /* ---- charts ------------------------------------------------------------ */

  function drawCharts() {
    const s = state.series || newSeries();
    drawChart($('#chart-loss'), [s.trainLoss, s.validLoss], {xMax: s.totalSteps});
    drawChart($('#chart-accuracy'), [s.trainAcc, s.validAcc], {xMax: s.totalSteps, yMin: 0, yMax: 1, percent: true});
  }

  /* Round steps for an axis from lo to hi: about n ticks at 1, 2 or 5 x 10^k. */
  function ticks(lo, hi, n) {
    const span = hi - lo || 1;
    const raw = span / n;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((v) => v >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
    return out;
  }

  /*
   * Draws line series ([[x, y], ...] each, colours --series0, --series1) on
   * canvas, x from 0 to opts.xMax (or the last point), y fitted to the data
   * unless opts.yMin/yMax fix it. The number of points drawn is left in
   * data-points (first series) and data-valid-points (second).
   */
  function drawChart(canvas, series, opts) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 560;
    const h = canvas.clientHeight || 260;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const css = getComputedStyle(document.documentElement);
    const colours = [css.getPropertyValue('--series0').trim() || '#2f6fdb', css.getPropertyValue('--series1').trim() || '#e0731d'];
    const muted = css.getPropertyValue('--muted').trim() || '#6b7385';
    const line = css.getPropertyValue('--line').trim() || '#dde1e8';
    canvas.dataset.points = String(series[0].length);
    canvas.dataset.validPoints = String(series[1] ? series[1].length : 0);

    const pts = series.flat();
    ctx.font = '11px system-ui, sans-serif';
    if (!pts.length) {
      ctx.fillStyle = muted;
      ctx.textAlign = 'center';
      ctx.fillText('waiting for metrics…', w / 2, h / 2);
      return;
    }
    const pad = {l: 52, r: 14, t: 12, b: 30};
    const xMax = Math.max(opts.xMax || 0, ...pts.map((p) => p[0]), 1);
    let yMin = opts.yMin ?? Math.min(...pts.map((p) => p[1]));
    let yMax = opts.yMax ?? Math.max(...pts.map((p) => p[1]));
    if (opts.yMin === undefined) {
      const margin = (yMax - yMin) * 0.08 || Math.abs(yMax) * 0.1 || 1;
      yMin = Math.max(0, yMin - margin);
      yMax += margin;
    }
    const X = (x) => pad.l + (x / xMax) * (w - pad.l - pad.r);
    const Y = (y) => h - pad.b - ((y - yMin) / (yMax - yMin || 1)) * (h - pad.t - pad.b);

    ctx.strokeStyle = line;
    ctx.fillStyle = muted;
    ctx.lineWidth = 1;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (const v of ticks(yMin, yMax, 5)) {
      ctx.beginPath();
      ctx.moveTo(pad.l, Math.round(Y(v)) + 0.5);
      ctx.lineTo(w - pad.r, Math.round(Y(v)) + 0.5);
      ctx.stroke();
      ctx.fillText(opts.percent ? `${Math.round(v * 100)}%` : formatNumber(v, 2), pad.l - 6, Y(v));
    }
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    for (const v of ticks(0, xMax, 6)) {
      if (!Number.isInteger(v)) continue;
      ctx.fillText(String(v), X(v), h - pad.b + 6);
    }
    ctx.fillText('step', w - pad.r - 12, h - 12);

    series.forEach((pts1, i) => {
      if (!pts1.length) return;
      ctx.strokeStyle = colours[i % colours.length];
      ctx.fillStyle = colours[i % colours.length];
      ctx.lineWidth = 2;
      ctx.beginPath();
      pts1.forEach(([x, y], k) => (k ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
      ctx.stroke();
      if (pts1.length <= 60) {
        for (const [x, y] of pts1) {
          ctx.beginPath();
          ctx.arc(X(x), Y(y), 2.5, 0, 2 * Math.PI);
          ctx.fill();
        }
      }
    });
  }

  /* ---- playground -------------------------------------------------------- */

  /* Streams one chat completion into out; resolves when it ends. */
  async function streamChat(model, prompt, maxTokens, temperature, out) {
    out.textContent = '';
    out.dataset.state = 'streaming';
    out.dataset.model = model;
    try {
      const resp = await api('POST', '/v1/chat/completions', {
        raw: true,
        json: {model, messages: [{role: 'user', content: prompt}], stream: true,
          max_tokens: maxTokens, temperature},
      });
      let done = false;
      let failure = null;
      await readEvents(resp, (ev) => {
        if (ev.data === '[DONE]') {
          done = true;
          return false;
        }
        const chunk = JSON.parse(ev.data);
        if (chunk.error) {
          failure = chunk.error.message || JSON.stringify(chunk.error);
          return false;
        }
        const choice = chunk.choices && chunk.choices[0];
        if (choice && choice.delta && typeof choice.delta.content === 'string') out.textContent += choice.delta.content;
        if (choice && choice.finish_reason) out.dataset.finish = choice.finish_reason;
        return true;
      });
      if (failure) throw new Error(`${model}: ${failure}`);
      if (!done) throw new Error(`${model}: the answer stream ended before [DONE].`);
      out.dataset.state = 'done';
    } catch (e) {
      out.dataset.state = 'error';
      throw e;
    }
  }

  async function sendPrompt(ev) {
    ev.preventDefault();
    const base = baseModels()[0];
    const model = $('#pg-model').value;
    const prompt = $('#pg-prompt').value;
    const maxTokens = Number($('#pg-max-tokens').value) || 64;
    const temperature = Number($('#pg-temperature').value) || 0;
    if (!base) return showError('The server has no base model to compare with.');
    const button = $('#pg-send');
    button.disabled = true;
    $('#pg-base-name').textContent = base.id;
    $('#pg-model-name').textContent = model || '(none chosen)';
    const runs = [streamChat(base.id, prompt, maxTokens, temperature, $('#pg-out-base'))];
    if (model) runs.push(streamChat(model, prompt, maxTokens, temperature, $('#pg-out-model')));
    else $('#pg-out-model').textContent = 'Choose a fine-tuned model to compare.';
    const results = await Promise.allSettled(runs);
    button.disabled = false;
    for (const r of results) if (r.status === 'rejected') report(r.reason);
  }

  /* ---- start ------------------------------------------------------------- */

  function setup() {
    $('#api-key').value = apiKey();
    $('#key-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const key = $('#api-key').value.trim();
      if (key) localStorage.setItem(KEY_STORE, key); else localStorage.removeItem(KEY_STORE);
      $('#key-prompt').hidden = true;
      clearError();
      refreshAll();
      if (state.selected) {
        const id = state.selected;
        state.selected = null;
        selectJob(id);
      }
    });
    $('#error-close').addEventListener('click', clearError);
    for (const b of document.querySelectorAll('#tabs button'))
      b.addEventListener('click', () => showTab(b.dataset.tab));
    $('#job-method').addEventListener('change', () => {
      for (const l of document.querySelectorAll('.lora-only')) l.hidden = $('#job-method').value !== 'lora';
    });
    $('#job-form').addEventListener('submit', createJob);
    $('#pg-form').addEventListener('submit', sendPrompt);
    $('#pg-model').addEventListener('change', () => { $('#pg-model-name').textContent = $('#pg-model').value; });
    window.addEventListener('resize', drawCharts);
    setupUpload();
    showTab(location.hash.slice(1), false);
    refreshAll();
  }

  setup();
})();
