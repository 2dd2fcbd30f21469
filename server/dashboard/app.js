// Dashboard: polls the API every 2 s with the token kept in localStorage (or given as #token=… once).
// It polls aggregates (GET /api/v1/fleet/summary) and one page of devices (the filter runs on the server),
// never the whole fleet: with 10,000 devices the full list is megabytes every 2 s.
const $ = (s) => document.querySelector(s);
const esc = (v) => String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
const ago = (ts) => {
  if (!ts) return '-';
  const s = Math.max(0, Math.round((Date.now() - ts) / 1000));
  return s < 60 ? `${s}s ago` : s < 3600 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
};

const hash = new URLSearchParams(location.hash.slice(1));
if (hash.get('token')) {
  localStorage.setItem('uz-token', hash.get('token'));
  history.replaceState(null, '', location.pathname);
}
let token = localStorage.getItem('uz-token');
let selected = null;
let role = 'viewer';

async function api(path, method = 'GET') {
  const r = await fetch(path, { method, headers: { authorization: `Bearer ${token}` } });
  const j = await r.json();
  if (r.status === 401) {
    localStorage.removeItem('uz-token');
    token = null;
    showLogin();
    throw new Error(j.error?.message ?? 'unauthorized');
  }
  if (!r.ok) throw new Error(`${j.error?.code}: ${j.error?.message}`);
  return j;
}

function showLogin() {
  $('#login').hidden = false;
  $('#app').hidden = true;
}

$('#login-form').addEventListener('submit', (e) => {
  e.preventDefault();
  token = $('#token').value.trim();
  localStorage.setItem('uz-token', token);
  $('#login').hidden = true;
  boot();
});

/** Counts by key, largest first; devices without a status yet count as `none`. */
function count(byKey, total, reporting, none) {
  const pairs = Object.entries(byKey);
  if (total > reporting) pairs.push([none, total - reporting]);
  return pairs.sort((a, b) => b[1] - a[1]);
}

function renderCards(s) {
  const list = (pairs) => pairs.slice(0, 4).map(([k, v]) => `<div><span>${esc(k)}</span><span>${v}</span></div>`).join('');
  $('#cards').innerHTML = `
    <div class="card" data-testid="online"><small>online</small><b class="ok">${s.online}</b><small>of ${s.total} devices</small></div>
    <div class="card"><small>offline</small><b class="${s.total - s.online ? 'warn' : ''}">${s.total - s.online}</b><small>not connected</small></div>
    <div class="card"><small>versions</small><div class="bars">${list(count(s.versions, s.total, s.reporting, 'unknown'))}</div></div>
    <div class="card"><small>active slot</small><div class="bars">${list(count(s.slots, s.total, s.reporting, '?'))}</div></div>
    <div class="card"><small>health</small><b class="${s.unhealthy ? 'bad' : 'ok'}">${s.total - s.unhealthy}</b><small>healthy · ${s.withError} with last error</small></div>`;
}

function renderRollouts(rollouts) {
  if (!rollouts.length) {
    $('#rollouts').innerHTML = '<p class="muted">No rollouts yet. <code>uz rollout create --channel stable</code></p>';
    return;
  }
  const canOperate = role !== 'viewer';
  $('#rollouts').innerHTML = rollouts.map(({ rollout: r, stages, totals, release }) => {
    const pct = (n, t) => (t ? (100 * n) / t : 0);
    const stageHtml = stages.map((s) => `
      <div class="stage ${s.stage === r.stageIndex && r.state !== 'completed' ? 'cur' : ''}">
        <div><b>Stage ${s.stage + 1}</b> <span class="muted">${esc(s.label)} · ${s.total} devices</span></div>
        <div class="bar"><span class="s" style="width:${pct(s.succeeded, s.total)}%"></span><span class="f" style="width:${pct(s.failed, s.total)}%"></span><span class="d" style="width:${pct(s.dispatched, s.total)}%"></span><span class="k" style="width:${pct(s.skipped, s.total)}%"></span></div>
        <small><span class="ok">${s.succeeded} ok</span> · <span class="bad">${s.failed} failed</span> · ${s.dispatched} in flight · ${s.pending} pending</small>
      </div>`).join('');
    return `<div class="rollout" data-rollout="${esc(r.id)}">
      <div class="head"><b>${esc(r.id)}</b><span class="state ${esc(r.state)}">${esc(r.state)}</span>
        <span>release <b>${esc(release?.version ?? r.releaseId)}</b> <span class="muted">${esc(r.releaseId)}</span></span>
        <span class="muted">target ${esc(JSON.stringify(r.target))}</span>
        <span>${totals.succeeded}/${totals.total} updated · <span class="bad">${totals.failed} failed</span></span>
        <span style="flex:1"></span>
        <button data-act="pause" ${r.state === 'running' && canOperate ? '' : 'disabled'}>Pause</button>
        <button data-act="resume" ${r.state === 'paused' && canOperate ? '' : 'disabled'}>Resume</button>
        <button class="danger" data-act="abort" ${(r.state === 'running' || r.state === 'paused') && canOperate ? '' : 'disabled'}>Abort</button>
      </div>
      ${r.reason ? `<div class="reason">⚠ ${esc(r.reason)}</div>` : ''}
      <div class="stages">${stageHtml}</div>
    </div>`;
  }).join('');
}

$('#rollouts').addEventListener('click', async (e) => {
  const b = e.target.closest('button[data-act]');
  if (!b) return;
  const id = b.closest('[data-rollout]').dataset.rollout;
  if (b.dataset.act === 'abort' && !confirm(`Abort ${id}?`)) return;
  b.disabled = true;
  try {
    await api(`/api/v1/rollouts/${id}/${b.dataset.act}`, 'POST');
  } catch (err) {
    alert(err.message);
  }
  refresh();
});

const PAGE = 500;
let lastDevices = [];
/** One page of devices; the filter (id, version or state) is applied by the server. */
function devicesUrl() {
  const f = $('#filter').value.trim();
  return `/api/v1/devices?limit=${PAGE}${f ? `&q=${encodeURIComponent(f.slice(0, 64))}` : ''}`;
}
function renderDevices(devices) {
  lastDevices = devices;
  const rows = devices;
  $('#devices tbody').innerHTML = rows.map((d) => `<tr data-id="${esc(d.id)}" class="${d.id === selected ? 'sel' : ''}">
    <td>${esc(d.id)}</td><td><span class="dot ${d.online ? 'on' : ''}"></span>${d.online ? 'online' : 'offline'}</td>
    <td>${esc(d.status?.version ?? '-')}</td><td>${esc(d.status?.slot ?? '-')}</td><td>${esc(d.status?.state ?? '-')}</td>
    <td>${d.status ? (d.status.workload.healthy ? '<span class="ok">healthy</span>' : '<span class="bad">unhealthy</span>') : '-'}${d.status?.workload.height !== undefined ? ` <span class="muted">#${d.status.workload.height}</span>` : ''}</td>
    <td class="bad">${esc(d.status?.lastError?.code ?? '')}</td><td class="muted">${ago(d.lastSeen)}</td></tr>`).join('');
}
let filterTimer = null;
$('#filter').addEventListener('input', () => {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(async () => {
    try {
      renderDevices((await api(devicesUrl())).devices);
    } catch (e) {
      $('#footer').textContent = `error: ${e.message}`;
    }
  }, 200);
});
$('#devices').addEventListener('click', (e) => {
  const tr = e.target.closest('tr[data-id]');
  if (!tr) return;
  selected = tr.dataset.id;
  renderDevices(lastDevices);
  renderDetail();
});

const bytes = (n) => (n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : `${Math.round(n / 2 ** 20)} MiB`);
/** The workload as the device last reported it: health, sync height (znnd), restarts, data partition. */
function workloadLine(st) {
  if (!st) return '';
  const w = st.workload;
  const data = st.data
    ? ` · data ${bytes(st.data.freeBytes)} free, ${bytes(st.data.usedBytes)} used${st.data.quotaBytes !== undefined ? ` of ${bytes(st.data.quotaBytes)} quota` : ''}`
    : '';
  return `<div data-testid="workload">workload <b>${esc(w.name)}</b> ${esc(w.version)} · ${w.healthy ? '<span class="ok">healthy</span>' : '<span class="bad">unhealthy</span>'} <span class="muted">${esc(w.detail)}</span>${w.height !== undefined ? ` · sync height <b>${w.height}</b>` : ''} · ${w.restarts} restarts${data}</div>`;
}

async function renderDetail() {
  if (!selected) return;
  const { device: d, history, active } = await api(`/api/v1/devices/${selected}`);
  const line = (e) => {
    const x = e.data ?? {};
    if (e.kind === 'event') return `<b>${esc(x.phase)}</b> ${esc(x.version)} <code>${esc(x.deploymentId ?? '')}</code>${x.error ? ` <span class="bad">${esc(x.error.code)}: ${esc(x.error.message)}</span>` : ''}`;
    if (e.kind === 'status') return `status ${esc(x.version)} slot ${esc(x.slot)} ${esc(x.state)}${x.healthy === false ? ' <span class="bad">unhealthy</span>' : ''}${x.lastError ? ` <span class="bad">${esc(x.lastError.code)}</span>` : ''}`;
    if (e.kind === 'rejected') return `<span class="warn">rejected ${esc(x.code)}</span> <code>${esc(x.reason)}</code>`;
    return esc(e.kind);
  };
  const errs = history.filter((e) => e.kind === 'event' && e.data?.error).slice(0, 5);
  $('#detail').innerHTML = `<h3>${esc(d.id)}</h3>
    <div><span class="dot ${d.online ? 'on' : ''}"></span>${d.online ? 'online' : 'offline'} · channel ${esc(d.channel)} ${d.tags.map((t) => `<code>#${esc(t)}</code>`).join(' ')}</div>
    <div>running <b>${esc(d.status?.version ?? '?')}</b> on slot ${esc(d.status?.slot ?? '?')} · ${esc(d.status?.state ?? '?')} · board ${esc(d.status?.board ?? '?')}</div>
    ${workloadLine(d.status)}
    <div>desired ${d.desired?.release ? `<b>${esc(d.desired.release.version)}</b> <code>${esc(d.desired.deploymentId ?? '')}</code>` : '<span class="muted">none</span>'}${active.length ? ' · <span class="warn">update in flight</span>' : ''}</div>
    <h4>Last errors</h4>${errs.length ? `<ol>${errs.map((e) => `<li>${new Date(e.ts).toISOString().slice(0, 19)} ${line(e)}</li>`).join('')}</ol>` : '<p class="muted">none</p>'}
    <h4>Update history</h4><ol>${history.slice(0, 60).map((e) => `<li><span class="muted">${new Date(e.ts).toISOString().slice(11, 19)}</span> ${line(e)}</li>`).join('')}</ol>`;
}

async function refresh() {
  if (!token) return;
  try {
    const [{ summary }, { devices, next }, { rollouts }] = await Promise.all([api('/api/v1/fleet/summary'), api(devicesUrl()), api('/api/v1/rollouts')]);
    renderCards(summary);
    renderRollouts(rollouts);
    renderDevices(devices);
    if (selected) await renderDetail();
    const shown = next ? ` (first ${devices.length} shown; filter to find others)` : '';
    $('#footer').textContent = `updated ${new Date().toLocaleTimeString()} · ${summary.total} devices${shown} · ${rollouts.length} rollouts`;
    document.body.dataset.ready = '1';
  } catch (e) {
    $('#footer').textContent = `error: ${e.message}`;
  }
}

async function boot() {
  if (!token) return showLogin();
  try {
    const me = await api('/api/v1/whoami');
    role = me.role;
    $('#who').textContent = `${me.name} (${me.role})`;
  } catch {
    return;
  }
  $('#app').hidden = false;
  await refresh();
  setInterval(refresh, 2000);
}
boot();
