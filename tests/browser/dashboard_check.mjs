// Drives the dashboard (GET /) of a running retune server in headless
// Chromium, as a person would: API key, uploads, a LoRA job with its live
// curves, the playground. Prints one JSON line of what it saw; the checks
// are made by tests/e2e_dashboard.py.
//
// Environment: RETUNE_URL, API_KEY, CHROMIUM (the browser binary),
// TRAIN_FILE, VALID_FILE, BAD_FILE (paths to upload), SHOTS (a folder for
// screenshots).
import puppeteer from 'puppeteer-core';
import path from 'node:path';

const env = process.env;
const obs = {console: [], screenshots: [], timeline: []};
let phase = 'no-key';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Opens a tab and waits until its lists are loaded (no plain request under way).
async function openTab(page, name) {
  await page.click(`#tabs button[data-tab="${name}"]`);
  await page.waitForSelector(`#tab-${name}:not([hidden])`);
  await page.waitForFunction(() => document.documentElement.dataset.pending === '0');
}

async function shot(page, name) {
  const file = path.join(env.SHOTS, `${String(obs.screenshots.length + 1).padStart(2, '0')}-${name}.png`);
  await page.screenshot({path: file, fullPage: true});
  obs.screenshots.push(file);
}

const visible = (page, sel) => page.$eval(sel, (e) => !e.hidden && e.offsetParent !== null).catch(() => false);
const text = (page, sel) => page.$eval(sel, (e) => e.textContent.trim()).catch(() => null);

async function main() {
  const browser = await puppeteer.launch({
    executablePath: env.CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--no-first-run'],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({width: 1280, height: 900});
    page.setDefaultTimeout(30000);
    page.on('console', (m) => {
      if (m.type() === 'error') obs.console.push({phase, text: m.text(), url: (m.location() || {}).url || ''});
    });
    page.on('pageerror', (e) => obs.console.push({phase, text: `uncaught: ${e.message}`, url: ''}));

    // 1. The page loads without a key; the server wants one: the prompt says so.
    await page.goto(`${env.RETUNE_URL}/`, {waitUntil: 'load'});
    await page.waitForSelector('#key-prompt:not([hidden])', {timeout: 10000}).catch(() => {});
    obs.title = await page.title();
    obs.key_prompt = await visible(page, '#key-prompt');
    obs.key_prompt_text = await text(page, '#key-prompt');
    obs.error_without_key = await visible(page, '#error');
    await shot(page, 'key-prompt');

    // 2. Enter the key: the prompt goes, the lists load.
    await page.type('#api-key', env.API_KEY);
    phase = 'key';
    await page.click('#save-key');
    await page.waitForSelector('#key-prompt[hidden]');
    await page.waitForSelector('#files-table tbody tr');
    obs.key_stored = await page.evaluate(() => localStorage.getItem('retune.apiKey'));

    // 3. A file with a bad line: the server's message (naming the line) is shown.
    const input = await page.$('#file-input');
    await input.uploadFile(env.BAD_FILE);
    await page.waitForSelector('#error:not([hidden])');
    obs.bad_upload_error = await text(page, '#error-text');
    await shot(page, 'bad-upload');
    await page.click('#error-close');
    obs.error_dismissed = !(await visible(page, '#error'));

    // 4. The training and validation files through the same file input.
    await input.uploadFile(env.TRAIN_FILE, env.VALID_FILE);
    await page.waitForFunction(() => ['zorbl_train.jsonl', 'zorbl_valid.jsonl'].every((n) =>
      document.querySelector(`#files-table tr[data-filename="${n}"][data-status="processed"]`)));
    obs.files = await page.$$eval('#files-table tbody tr[data-id]', (rows) =>
      rows.map((r) => ({id: r.dataset.id, filename: r.dataset.filename, status: r.dataset.status})));
    await shot(page, 'files');

    // 5. A LoRA job from the form.
    await openTab(page, 'jobs');
    await page.waitForSelector('#job-model option');
    const fileId = (name) => obs.files.find((f) => f.filename === name).id;
    await page.select('#job-training', fileId('zorbl_train.jsonl'));
    await page.select('#job-validation', fileId('zorbl_valid.jsonl'));
    await page.select('#job-method', 'lora');
    for (const [sel, value] of [['#job-epochs', '30'], ['#job-batch', '1'], ['#job-lora-r', '32'],
      ['#job-suffix', 'dash'], ['#job-extra', '{"eval_interval": 1}']]) {
      await page.$eval(sel, (e) => { e.value = ''; });
      await page.type(sel, value);
    }
    await page.select('#job-targets', 'all-linear');
    obs.models_offered = await page.$$eval('#job-model option', (os) => os.map((o) => o.value));
    await page.click('#job-create');
    await page.waitForSelector('#job-detail:not([hidden])');
    obs.job_id = await text(page, '#job-detail-id');

    // 6. The curves grow while the job runs: the points plotted, 4 times a second.
    const t0 = Date.now();
    for (;;) {
      const o = await page.evaluate(() => ({
        points: Number(document.querySelector('#chart-loss').dataset.points),
        valid_points: Number(document.querySelector('#chart-loss').dataset.validPoints),
        status: document.querySelector('#job-detail').dataset.status || '',
      }));
      o.t = (Date.now() - t0) / 1000;
      obs.timeline.push(o);
      if (o.status === 'running' && o.points >= 3 && !obs.mid_shot) {
        obs.mid_shot = true;
        await shot(page, 'job-running');
      }
      if (['succeeded', 'failed', 'cancelled'].includes(o.status) || o.t > 150) break;
      await sleep(250);
    }
    await page.waitForFunction(() => document.querySelector('#job-detail').dataset.stream === 'finished',
      {timeout: 15000}).catch(() => {});
    await page.waitForFunction(() => document.querySelector('#job-checkpoints tbody tr[data-id]'),
      {timeout: 10000}).catch(() => {});
    obs.final = await page.evaluate(() => {
      const d = (sel) => document.querySelector(sel).dataset;
      return {
        status: d('#job-detail').status, stream: d('#job-detail').stream,
        loss_points: Number(d('#chart-loss').points), valid_points: Number(d('#chart-loss').validPoints),
        accuracy_points: Number(d('#chart-accuracy').points),
        checkpoints: [...document.querySelectorAll('#job-checkpoints tbody tr[data-id]')].map(
          (r) => r.children[1].textContent),
        events: document.querySelectorAll('#job-events li').length,
        metrics_events: document.querySelectorAll('#job-events li[data-type="metrics"]').length,
        fields: Object.fromEntries([...document.querySelectorAll('#job-fields dd')].map((e) => [e.dataset.field, e.textContent])),
        row_status: (document.querySelector(`#jobs-table tr[data-id="${document.querySelector('#job-detail-id').textContent}"]`) || {dataset: {}}).dataset.status,
      };
    });
    await shot(page, 'job-done');

    // 7. The finished model in the playground, beside the base model, both streamed.
    const row = `#jobs-table tr[data-id="${obs.job_id}"]`;
    await page.waitForSelector(`${row} button.try:not([hidden])`, {timeout: 10000});
    await page.click(`${row} button.try`);
    await page.waitForSelector('#tab-playground:not([hidden])');
    await page.waitForFunction((m) => document.querySelector('#pg-model').value === m, {},
      obs.final.fields.fine_tuned_model || '?').catch(() => {});
    obs.playground_model = await page.$eval('#pg-model', (e) => e.value);
    await page.evaluate(() => { // count how often each answer grows: more than once is a stream of deltas
      window.__updates = {base: 0, model: 0};
      for (const [k, sel] of [['base', '#pg-out-base'], ['model', '#pg-out-model']])
        new MutationObserver((records) => { window.__updates[k] += records.length; }).observe(document.querySelector(sel),
          {childList: true, characterData: true, subtree: true});
    });
    await page.click('#pg-send');
    await page.waitForFunction(() => ['#pg-out-base', '#pg-out-model'].every((s) =>
      ['done', 'error'].includes(document.querySelector(s).dataset.state)), {timeout: 60000});
    obs.playground = await page.evaluate(() => ({
      base: {model: document.querySelector('#pg-out-base').dataset.model, state: document.querySelector('#pg-out-base').dataset.state,
        text: document.querySelector('#pg-out-base').textContent, updates: window.__updates.base},
      model: {model: document.querySelector('#pg-out-model').dataset.model, state: document.querySelector('#pg-out-model').dataset.state,
        text: document.querySelector('#pg-out-model').textContent, updates: window.__updates.model},
    }));
    await shot(page, 'playground');

    // 8. The models list: base, the adapter, its checkpoints.
    await openTab(page, 'models');
    await page.waitForSelector('#models-table tbody tr[data-kind="adapter"]');
    obs.models = await page.$$eval('#models-table tbody tr[data-id]', (rows) =>
      rows.map((r) => ({id: r.dataset.id, kind: r.dataset.kind})));
    await shot(page, 'models');

    // 9. Deleting the bad file from the Files tab (the button asks twice).
    await openTab(page, 'files');
    const bad = '#files-table tr[data-status="error"] button.danger';
    await page.waitForSelector(bad);
    await page.click(bad);
    await page.waitForFunction((sel) => document.querySelector(sel).textContent === 'Sure?', {}, bad);
    await page.click(bad);
    await page.waitForFunction(() => !document.querySelector('#files-table tr[data-status="error"]'));
    obs.files_after_delete = await page.$$eval('#files-table tbody tr[data-id]', (rows) => rows.map((r) => r.dataset.filename));

    obs.error_at_end = await visible(page, '#error') ? await text(page, '#error-text') : null;
    obs.error_elements = await page.$$eval('#error, .error', (es) =>
      es.filter((e) => !e.hidden && e.offsetParent !== null).map((e) => e.textContent.trim()));
    await shot(page, 'end');
  } finally {
    await browser.close();
  }
}

main().then(() => {
  console.log(JSON.stringify(obs));
}, (e) => {
  obs.failure = String(e && e.stack || e);
  console.log(JSON.stringify(obs));
  process.exitCode = 1;
});
