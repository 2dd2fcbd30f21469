// The dashboard in headless Chromium (Debian's chromium, driven by playwright-core) against a live server
// with simulated devices. Saves test-artifacts/dashboard.png.
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { chromium } from 'playwright-core';
import { FleetSim } from '../../server/sim.js';
import { auth, makeBundle, testServer, tmp } from './helpers.js';

const CHROMIUM = '/usr/bin/chromium';

describe('dashboard (headless Chromium)', () => {
  it('shows the fleet, live rollout progress, device detail, and the pause/resume buttons work', async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found: apt-get install chromium`);
    const s = await testServer();
    const sim = new FleetSim({ url: s.urls!.mqtt, devices: 40, failHealthPct: 25, stepMs: 30, download: 'none', prefix: 'dash', seed: 'dash' });
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
    try {
      await sim.start();
      const up = await s.server.app.inject({ method: 'POST', url: '/api/v1/releases?channel=stable', headers: { ...auth(s.token), 'content-type': 'application/octet-stream' }, payload: readFileSync(await makeBundle(tmp(), [s.keys.release], { version: '2.1.0' })) });
      expect(up.statusCode).toBe(201);
      const c = await s.server.app.inject({ method: 'POST', url: '/api/v1/rollouts', headers: auth(s.token), payload: { channel: 'stable', stages: ['25%', '100%'], minDevices: 5, failureThreshold: { percent: 15 }, seed: 'dash' } });
      const id = c.json().rollout.id as string;
      for (let i = 0; i < 200 && (await s.server.ctx.rollouts.status(id)).rollout.state === 'running'; i++) await new Promise((r) => setTimeout(r, 50));
      expect((await s.server.ctx.rollouts.status(id)).rollout.state).toBe('paused');

      const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
      const errors: string[] = [];
      page.on('pageerror', (e) => errors.push(e.message));
      page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
      await page.goto(`${s.urls!.http}/#token=${s.token}`);
      await page.waitForSelector('body[data-ready="1"]', { timeout: 15_000 });
      expect(await page.textContent('[data-testid="online"] b')).toBe('40');
      expect(await page.textContent(`[data-rollout="${id}"] .state`)).toBe('paused');
      expect(await page.textContent(`[data-rollout="${id}"] .reason`)).toMatch(/failure threshold/);
      expect(await page.locator('#devices tbody tr').count()).toBe(40);
      // device detail with history and last error of a device that rolled back
      const failed = (await s.server.ctx.storage.listMembers(id, { state: 'failed' }))[0]!.deviceId;
      await page.click(`#devices tr[data-id="${failed}"]`);
      await page.waitForSelector('#detail h3');
      expect(await page.textContent('#detail')).toMatch(/HEALTH_CHECK_FAILED/);
      expect(await page.textContent('#detail')).toMatch(/rolled-back/);
      // the workload as reported: health and the node's sync height
      expect(await page.textContent('#detail [data-testid="workload"]')).toMatch(/workload app .* sync height \d{7}/);
      // the device filter runs on the server (the dashboard loads one page of devices, not the fleet)
      await page.fill('#filter', failed);
      await page.waitForFunction(() => document.querySelectorAll('#devices tbody tr').length === 1, undefined, { timeout: 10_000 });
      expect(await page.getAttribute('#devices tbody tr', 'data-id')).toBe(failed);
      await page.fill('#filter', '');
      await page.waitForFunction(() => document.querySelectorAll('#devices tbody tr').length === 40, undefined, { timeout: 10_000 });
      // resume from the dashboard, then pause again
      await page.click(`[data-rollout="${id}"] button[data-act="resume"]`);
      await page.waitForFunction((rid) => document.querySelector(`[data-rollout="${rid}"] .state`)?.textContent !== 'paused', id, { timeout: 10_000 });
      expect((await s.server.ctx.storage.listAudit(20)).some((a) => a.action === 'rollout.resume' && a.actor === 'admin')).toBe(true);
      mkdirSync('test-artifacts', { recursive: true });
      await page.waitForSelector('body[data-ready="1"]');
      await page.screenshot({ path: 'test-artifacts/dashboard.png', fullPage: true });
      expect(statSync('test-artifacts/dashboard.png').size).toBeGreaterThan(20_000);
      expect(errors).toEqual([]);
    } finally {
      await browser.close();
      await sim.stop();
      await s.server.close();
    }
  }, 90_000);
});
