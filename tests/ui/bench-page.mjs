// Measures how fast the execution page of a 1,000-step execution renders:
// the server's time to answer the page, and in headless Chromium the time
// from navigation to the load event (HTML parsed, styles applied, SVG laid
// out and painted once). A measurement, not a test: it prints the figures.
//
//   STEPWISE_URL=... STEPWISE_TOKEN=<admin token> node bench-page.mjs [steps] [width]
//
// The pipeline is `steps` Pass steps in layers of `width`; each depends on
// two steps of the layer above, so the layout has real crossings to reduce.

import { chromium } from 'playwright-core';

const base = process.env.STEPWISE_URL ?? 'http://127.0.0.1:8080';
const token = process.env.STEPWISE_TOKEN;
const steps = Number(process.argv[2] ?? 1000);
const width = Number(process.argv[3] ?? 25);

async function api(method, route, body) {
  const response = await fetch(base + route, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${route}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

const definition = { Version: '2020-12-01', Steps: [] };
for (let i = 0; i < steps; i++) {
  const step = { Name: `S${i}`, Type: 'Pass', Arguments: { i } };
  if (i >= width) {
    const above = i - width - (i % width) ;
    step.DependsOn = [`S${above + (i % width)}`, `S${above + ((i + 1) % width)}`];
  }
  definition.Steps.push(step);
}
const name = `bench-ui-${Date.now().toString(36)}`;
await api('POST', '/v1/pipelines', { name, definition });
const id = (await api('POST', `/v1/pipelines/${name}/executions`, {})).execution_id;
for (;;) {
  const e = await api('GET', `/v1/executions/${id}?wait_seconds=30`);
  if (['Succeeded', 'Failed', 'Stopped'].includes(e.status)) break;
}

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', args: ['--no-sandbox'] });
const context = await browser.newContext({ viewport: { width: 1280, height: 820 } });
const page = await context.newPage();
await page.goto(`${base}/ui/sign-in`);
await page.getByLabel('API token').fill(token);
await page.getByRole('button', { name: 'Sign in' }).click();
await page.waitForURL(`${base}/ui/`);
const cookie = (await context.cookies()).find((c) => c.name === 'stepwise_session');

const server = [];
const browserLoad = [];
let bytes = 0;
for (let round = 0; round < 6; round++) {
  const started = performance.now();
  const response = await fetch(`${base}/ui/executions/${id}`, { headers: { cookie: `${cookie.name}=${cookie.value}` } });
  bytes = (await response.text()).length;
  server.push(performance.now() - started);
  await page.goto(`${base}/ui/executions/${id}`, { waitUntil: 'load' });
  const timing = await page.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0];
    return { load: nav.loadEventEnd - nav.startTime, response: nav.responseEnd - nav.startTime };
  });
  browserLoad.push(timing.load);
}
const nodes = await page.locator('svg.dag .node').count();
await browser.close();
await api('DELETE', `/v1/pipelines/${name}`);

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
// The first round warms the server's definition cache; the median is of all.
console.log(JSON.stringify({
  steps, nodes, page_bytes: bytes,
  server_ms_median: Math.round(median(server)), server_ms: server.map(Math.round),
  browser_load_ms_median: Math.round(median(browserLoad)), browser_load_ms: browserLoad.map(Math.round),
}));
