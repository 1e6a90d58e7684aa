// Browser tests of the stepwise web UI: headless Chromium (Debian's
// `chromium`) driven by playwright-core, against a running server.
//
//   STEPWISE_URL=http://127.0.0.1:8080 STEPWISE_TOKEN=<admin token> node ui.test.mjs
//
// Run by .ci/ui, which starts a release server on a fresh database. The
// set-up goes through the REST API with the admin token; everything checked
// goes through the pages. Screenshots go to tests/ui/screenshots/ (not
// committed). Waiting is on the page's own state (selectors), never a sleep:
// the running step waits for a file this script creates.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const base = process.env.STEPWISE_URL ?? 'http://127.0.0.1:8080';
const token = process.env.STEPWISE_TOKEN;
if (!token) throw new Error('STEPWISE_TOKEN must hold an admin token');
const here = path.dirname(fileURLToPath(import.meta.url));
const shots = path.join(here, 'screenshots');
fs.mkdirSync(shots, { recursive: true });
const WAIT = 60_000;

// --- REST set-up -----------------------------------------------------------

async function api(method, route, body, bearer = token) {
  const response = await fetch(base + route, {
    method,
    headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${route}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

async function finished(id) {
  for (;;) {
    const execution = await api('GET', `/v1/executions/${id}?wait_seconds=30`);
    if (['Succeeded', 'Failed', 'Stopped'].includes(execution.status)) return execution;
  }
}

const demo = {
  Version: '2020-12-01',
  Parameters: [{ Name: 'Epochs', Type: 'Integer', DefaultValue: 10 }],
  Steps: [
    { Name: 'Prepare', Type: 'Command',
      Arguments: { Command: ['sh', '-c', 'echo 1,2,3 > $STEPWISE_ARTIFACTS/data.csv; echo "$0" > $STEPWISE_OUTPUTS', '{"rows": 3}'] },
      CacheConfig: { Enabled: true, ExpireAfter: 'P30D' } },
    { Name: 'Train', Type: 'Command',
      Arguments: { Command: ['sh', '-c', 'echo training on $1 for $EPOCHS epochs; echo "$0" > $STEPWISE_OUTPUTS',
                             '{"accuracy": 0.93}', { Get: 'Steps.Prepare.ArtifactsUri' }],
                   Env: { EPOCHS: { Get: 'Parameters.Epochs' } } },
      CacheConfig: { Enabled: true, ExpireAfter: 'P30D' } },
    { Name: 'Check', Type: 'Condition', Arguments: {
      Conditions: [{ Type: 'GreaterThanOrEqualTo', LeftValue: { Get: 'Steps.Train.Outputs.accuracy' }, RightValue: 0.9 }],
      IfSteps: [{ Name: 'Report', Type: 'Pass',
                  Arguments: { rows: { Get: 'Steps.Prepare.Outputs.rows' }, accuracy: { Get: 'Steps.Train.Outputs.accuracy' } } }],
      ElseSteps: [{ Name: 'TooLow', Type: 'Fail', Arguments: { ErrorMessage: 'accuracy too low' } }] } },
  ],
};

const gates = fs.mkdtempSync(path.join(os.tmpdir(), 'stepwise-ui-'));
const waitFor = (file) => ['sh', '-c', 'while [ ! -e "$0" ]; do sleep 0.05; done; echo "$0" is here', path.join(gates, file)];
const live = {
  Version: '2020-12-01',
  Steps: [
    { Name: 'Gate', Type: 'Command', Arguments: { Command: waitFor('gate') } },
    { Name: 'Finish', Type: 'Command', DependsOn: ['Gate'], Arguments: { Command: waitFor('finish') } },
  ],
};

const held = {
  Version: '2020-12-01',
  Steps: [{ Name: 'Hold', Type: 'Command', Arguments: { Command: waitFor('hold') } }],
};

const suffix = Date.now().toString(36);
const demoName = `ui-demo-${suffix}`;
const liveName = `ui-live-${suffix}`;
await api('POST', '/v1/pipelines', { name: demoName, definition: demo });
await api('POST', '/v1/pipelines', { name: liveName, definition: live });
const heldName = `ui-held-${suffix}`;
await api('POST', '/v1/pipelines', { name: heldName, definition: held });
const run1 = (await api('POST', `/v1/pipelines/${demoName}/executions`, {})).execution_id;
assert.equal((await finished(run1)).status, 'Succeeded');
const run2 = (await api('POST', `/v1/pipelines/${demoName}/executions`, {
  selective_execution: { source_execution: run1, selected_steps: ['Train'] },
})).execution_id;
assert.equal((await finished(run2)).status, 'Succeeded');
const viewer = (await api('POST', '/v1/tokens', { name: `ui-viewer-${suffix}`, role: 'viewer' })).token;

// --- the browser -------------------------------------------------------------

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
let failures = 0;
async function check(name, body) {
  const started = Date.now();
  try {
    await body();
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    failures += 1;
    console.log(`FAIL ${name}\n${error.stack}`);
  }
}

async function signedIn(bearer) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 820 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  await page.goto(`${base}/ui/`);
  assert.match(page.url(), /\/ui\/sign-in$/);
  await page.getByLabel('API token').fill(bearer);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(`${base}/ui/`);
  return { context, page };
}

const node = (page, step) => page.locator(`svg.dag [data-step="${step}"]`);

const admin = await signedIn(token);
const page = admin.page;

await check('sign in: the cookie is HttpOnly and SameSite=Strict, the token is in no URL', async () => {
  const cookies = await admin.context.cookies();
  const session = cookies.find((c) => c.name === 'stepwise_session');
  assert.ok(session, 'the session cookie is set');
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, 'Strict');
  assert.equal(session.path, '/');
  assert.ok(!page.url().includes(token));
  assert.equal(await page.evaluate(() => document.cookie), '', 'the page script cannot read the cookie');
  await page.getByRole('link', { name: demoName }).waitFor();
  await page.screenshot({ path: path.join(shots, 'pipelines.png') });
});

await check('an execution: the DAG shows every step with its status', async () => {
  await page.goto(`${base}/ui/executions/${run1}`);
  const steps = (await api('GET', `/v1/executions/${run1}/steps`)).steps;
  assert.equal(steps.length, 5);
  for (const step of steps) {
    const classes = await node(page, step.step_name).getAttribute('class');
    assert.ok(classes.split(' ').includes(`st-${step.status}`), `${step.step_name}: ${classes}, want ${step.status}`);
    // The status reads without colour too: words in the node and its label.
    assert.ok((await node(page, step.step_name).getAttribute('aria-label')).includes(step.status));
    assert.ok((await node(page, step.step_name).locator('.detail').textContent()).includes(step.status));
  }
  assert.ok((await node(page, 'TooLow').getAttribute('class')).includes('st-Skipped'));
});

await check("a step's panel shows its log, opened from the graph by keyboard", async () => {
  await node(page, 'Train').focus();
  await page.keyboard.press('Enter');
  await page.waitForURL(/step=Train/);
  await page.locator('#panel h2', { hasText: 'Step Train' }).waitFor();
  await page.locator('#log', { hasText: 'training on' }).waitFor();
  await page.locator('#panel', { hasText: 'Attempts' }).waitFor();
});

await check("a reused step's badge links to its source execution", async () => {
  await page.goto(`${base}/ui/executions/${run2}?step=Train#panel`);
  assert.ok((await node(page, 'Prepare').getAttribute('class')).includes('reused'));
  const link = page.locator('table.steps tr[data-step="Prepare"] .badge.reused a.source');
  assert.equal(await link.getAttribute('href'), `/ui/executions/${run1}`);
  await page.locator('#log', { hasText: 'training on' }).waitFor();
  await page.screenshot({ path: path.join(shots, 'execution.png') });
  await link.click();
  await page.waitForURL(`${base}/ui/executions/${run1}`);
});

await check("a running execution's nodes change live", async () => {
  const running = (await api('POST', `/v1/pipelines/${liveName}/executions`, {})).execution_id;
  await page.goto(`${base}/ui/executions/${running}`);
  // A mark the page would lose if it were reloaded: the change must come
  // from the event stream.
  await page.evaluate(() => { window.notReloaded = true; });
  await page.locator('svg.dag [data-step="Gate"].st-Executing').waitFor({ state: 'attached' });
  assert.ok((await node(page, 'Finish').getAttribute('class')).includes('st-Pending'));
  fs.writeFileSync(path.join(gates, 'gate'), '');
  await page.locator('svg.dag [data-step="Gate"].st-Succeeded').waitFor({ state: 'attached' });
  await page.locator('svg.dag [data-step="Finish"].st-Executing').waitFor({ state: 'attached' });
  assert.equal(await page.evaluate(() => window.notReloaded), true, 'updated in place');
  assert.ok((await page.locator('tr[data-step="Gate"] .step-status').textContent()).includes('Succeeded'));
  await page.screenshot({ path: path.join(shots, 'live.png') });
  // The running step's log follows as it is written.
  await page.goto(`${base}/ui/executions/${running}?step=Finish#panel`);
  fs.writeFileSync(path.join(gates, 'finish'), '');
  await page.locator('#log', { hasText: 'is here' }).waitFor();
  await page.locator('#execution-status', { hasText: 'Succeeded' }).waitFor();
});

await check('plan a selective run on the DAG, then start it', async () => {
  await page.goto(`${base}/ui/pipelines/${demoName}`);
  await page.screenshot({ path: path.join(shots, 'pipeline.png'), fullPage: true });
  await page.getByLabel('The steps ticked below', { exact: false }).check();
  await page.locator('#pick-Train').check();
  await page.getByLabel('Source execution', { exact: true }).selectOption(run1);
  await page.getByRole('button', { name: 'Plan' }).click();
  await page.waitForURL(/\/plan\?/);
  const verdict = (step) => page.locator(`table.plan tr[data-step="${step}"] .verdict`).textContent();
  assert.match(await verdict('Prepare'), /Reuse/);
  assert.match(await verdict('Train'), /Run/);
  assert.ok((await node(page, 'Prepare').getAttribute('class')).includes('v-Reuse'));
  assert.ok((await node(page, 'Train').getAttribute('class')).includes('v-Run'));
  await page.screenshot({ path: path.join(shots, 'plan.png') });
  await page.getByRole('button', { name: 'Start this run' }).click();
  await page.waitForURL(/\/ui\/executions\/[0-9a-f-]+$/);
  const started = page.url().split('/').pop();
  const execution = await finished(started);
  assert.equal(execution.status, 'Succeeded');
  assert.deepEqual(execution.selective_execution.selected_steps, ['Train']);
  await page.locator('#execution-status', { hasText: 'Succeeded' }).waitFor();
});

await check('stop a running execution, then retry it, with the buttons', async () => {
  const id = (await api('POST', `/v1/pipelines/${heldName}/executions`, {})).execution_id;
  await page.goto(`${base}/ui/executions/${id}`);
  await page.locator('svg.dag [data-step="Hold"].st-Executing').waitFor({ state: 'attached' });
  assert.equal(await page.getByRole('button', { name: 'Retry' }).count(), 0);
  await page.getByRole('button', { name: 'Stop' }).click();
  await page.locator('#execution-status', { hasText: 'Stopped' }).waitFor();
  await page.getByRole('button', { name: 'Retry' }).click();
  await page.locator('svg.dag [data-step="Hold"].st-Executing').waitFor({ state: 'attached' });
  fs.writeFileSync(path.join(gates, 'hold'), '');
  await page.locator('#execution-status', { hasText: 'Succeeded' }).waitFor();
  assert.equal((await api('GET', `/v1/executions/${id}/steps/Hold`)).attempt_count, 2);
});

await check('a version diff and a definition', async () => {
  const changed = structuredClone(demo);
  changed.Parameters[0].DefaultValue = 12;
  await api('PUT', `/v1/pipelines/${demoName}`, { definition: changed });
  await page.goto(`${base}/ui/pipelines/${demoName}`);
  await page.getByRole('link', { name: 'v1 → v2' }).click();
  await page.locator('pre.diff ins', { hasText: '12' }).waitFor();
  await page.locator('pre.diff del', { hasText: '10' }).waitFor();
  await page.screenshot({ path: path.join(shots, 'diff.png') });
});

await check('a viewer token sees no start, stop or retry, and cannot start anything', async () => {
  const { context, page: view } = await signedIn(viewer);
  await view.goto(`${base}/ui/pipelines/${demoName}`);
  assert.equal(await view.locator('#plan').count(), 0, 'no plan form');
  await view.goto(`${base}/ui/executions/${run1}`);
  assert.equal(await view.getByRole('button', { name: /Stop|Retry/ }).count(), 0);
  const plan = await view.goto(`${base}/ui/pipelines/${demoName}/plan?mode=all`);
  assert.equal(plan.status(), 403);
  const before = (await api('GET', `/v1/pipelines/${demoName}/executions`)).executions.length;
  // The form post a page of this site would send, with the viewer's cookie.
  const start = await view.request.post(`${base}/ui/pipelines/${demoName}/start`, {
    form: { mode: 'all' }, headers: { origin: base }, maxRedirects: 0,
  });
  assert.equal(start.status(), 403);
  const rest = await view.request.post(`${base}/v1/pipelines/${demoName}/executions`, {
    data: {}, headers: { origin: base },
  });
  assert.equal(rest.status(), 403);
  assert.equal((await api('GET', `/v1/pipelines/${demoName}/executions`)).executions.length, before);
  await context.close();
});

await check('sign out forgets the token', async () => {
  await page.goto(`${base}/ui/`);
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.waitForURL(/\/ui\/sign-in$/);
  await page.goto(`${base}/ui/executions/${run1}`);
  assert.match(page.url(), /\/ui\/sign-in$/);
  await page.screenshot({ path: path.join(shots, 'sign-in.png') });
});

await browser.close();
fs.rmSync(gates, { recursive: true, force: true });
if (failures > 0) {
  console.log(`${failures} browser check(s) failed`);
  process.exit(1);
}
console.log('all browser checks passed');
