// The status page: plain JavaScript, no framework, nothing fetched from
// elsewhere (the Content-Security-Policy allows this origin only).
//
// Every figure comes from the REST API with the token the user typed in, as
// `Authorization: Bearer`: the page itself is public, the data is not, and a
// tenant's token shows only what the API shows that tenant. The token is kept
// in sessionStorage (this tab only); `#token=…` in the URL is taken too, as a
// fragment never reaches the server, and removed from the address bar.
'use strict';

(() => {
  const STORAGE_KEY = 'wasmhook.token';
  const REFRESH_MS = 5000;
  const SHOWN_ENTRIES = 5;
  const COLOURS = {
    delivered: '#2f9e5e',
    filtered: '#8a94a6',
    denied: '#d9962b',
    dead_lettered: '#d64545',
    mean: '#3a6fd8',
    max: '#a05ad8',
  };

  const $ = (selector, root = document) => root.querySelector(selector);

  // Bumped on every (re)open: an answer for an older token is dropped.
  let generation = 0;
  let timer = null;
  let platformStatus = null;

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  const token = () => sessionStorage.getItem(STORAGE_KEY);

  async function api(path, options = {}) {
    const headers = { Accept: 'application/json', Authorization: `Bearer ${token()}` };
    if (options.body) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(path, { ...options, headers, cache: 'no-store', credentials: 'omit' });
    } catch (error) {
      throw new ApiError(0, `the server does not answer (${error.message})`);
    }
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = null;
    }
    if (!response.ok) {
      const message = body && body.message ? body.message : `${response.status} ${response.statusText}`;
      throw new ApiError(response.status, message);
    }
    return { body, response };
  }

  // Every page of a list route, following its `link: <…>; rel="next"`.
  async function listAll(path) {
    const items = [];
    let next = path;
    for (let page = 0; next && page < 50; page += 1) {
      const { body, response } = await api(next);
      items.push(...body);
      const match = /<([^>]+)>;\s*rel="next"/.exec(response.headers.get('link') || '');
      next = match ? match[1] : null;
    }
    return items;
  }

  function showError(message) {
    const error = $('#error');
    error.textContent = message;
    error.hidden = false;
  }

  function clearError() {
    $('#error').hidden = true;
    $('#error').textContent = '';
  }

  function stop() {
    generation += 1;
    clearTimeout(timer);
    timer = null;
  }

  function showLogin() {
    stop();
    $('#dashboard').hidden = true;
    $('#logout').hidden = true;
    $('#login').hidden = false;
    $('#intro').hidden = false;
    $('#who').textContent = '';
    $('#subscriptions').replaceChildren();
    $('#token').focus();
  }

  function forget(reason) {
    sessionStorage.removeItem(STORAGE_KEY);
    showLogin();
    if (reason) showError(reason);
  }

  // Takes `#token=…` from the address, keeping it out of the history.
  function tokenFromFragment() {
    const fragment = new URLSearchParams(location.hash.slice(1));
    const given = (fragment.get('token') || '').trim();
    if (!given) return false;
    sessionStorage.setItem(STORAGE_KEY, given);
    history.replaceState(null, '', location.pathname + location.search);
    return true;
  }

  // Who the token is: the admin may list tenants, a tenant gets a 403.
  async function open() {
    stop();
    const current = generation;
    clearError();
    let admin;
    try {
      await api('/1/Tenant?limit=1');
      admin = true;
    } catch (error) {
      if (current !== generation) return;
      if (error.status === 401) {
        forget(`The token was refused: ${error.message}.`);
        return;
      }
      if (error.status !== 403) {
        showError(`Could not open the status: ${error.message}.`);
        timer = setTimeout(open, REFRESH_MS);
        return;
      }
      admin = false;
    }
    if (current !== generation) return;
    $('#who').textContent = admin ? 'as the admin' : 'as a tenant';
    $('#switch').hidden = !admin;
    $('#switch-note').hidden = admin;
    $('#login').hidden = true;
    $('#intro').hidden = true;
    $('#logout').hidden = false;
    $('#dashboard').hidden = false;
    await refresh(current);
  }

  async function refresh(current) {
    try {
      const [platform, subscriptions, plugins] = await Promise.all([
        api('/1/EventNotificationAdmin'),
        listAll('/1/Subscription?limit=100'),
        listAll('/1/Plugin?limit=100'),
      ]);
      const details = await Promise.all(subscriptions.map(detailsOf));
      if (current !== generation) return;
      renderPlatform(platform.body);
      renderSubscriptions(subscriptions, details);
      renderPlugins(plugins);
      $('#updated').textContent = `; last at ${new Date().toLocaleTimeString()}`;
      clearError();
    } catch (error) {
      if (current !== generation) return;
      if (error.status === 401) {
        forget(`The token was refused: ${error.message}.`);
        return;
      }
      showError(`Could not refresh: ${error.message}.`);
    }
    timer = setTimeout(() => refresh(current), REFRESH_MS);
  }

  // A subscription's status and series; null for one deleted meanwhile.
  async function detailsOf(subscription) {
    try {
      const [status, series] = await Promise.all([
        api(`/1/Subscription/${subscription.id}/Status`),
        api(`/1/Subscription/${subscription.id}/Series`),
      ]);
      return { status: status.body, series: series.body };
    } catch (error) {
      if (error.status === 404) return null;
      throw error;
    }
  }

  function renderPlatform(platform) {
    platformStatus = platform.status;
    const status = $('#platform-status');
    status.textContent = platform.status;
    status.className = `platform-${platform.status}`;
    $('#platform-since').textContent = `since ${when(platform.timestamp)}`;
    const message = $('#platform-message');
    message.hidden = !(platform.status === 'offline' && platform.offline_message);
    message.textContent = platform.offline_message || '';
    const online = platform.status === 'online';
    $('#switch-button').textContent = online ? 'Take offline' : 'Bring online';
    $('#offline-message').hidden = !online;
  }

  async function flip(event) {
    event.preventDefault();
    const offline = platformStatus === 'online';
    const request = offline
      ? { status: 'offline', offline_message: $('#offline-message').value.trim() }
      : { status: 'online' };
    const result = $('#switch-result');
    const button = $('#switch-button');
    button.disabled = true;
    result.textContent = '';
    try {
      const { body } = await api('/1/EventNotificationAdmin', {
        method: 'POST',
        body: JSON.stringify(request),
      });
      renderPlatform(body);
      result.textContent = `Switched ${body.status}.`;
      $('#offline-message').value = '';
    } catch (error) {
      result.textContent = error.status === 403
        ? `Only the admin may switch the platform: ${error.message}.`
        : `Not switched: ${error.message}.`;
    } finally {
      button.disabled = false;
    }
  }

  function renderSubscriptions(subscriptions, details) {
    const list = $('#subscriptions');
    const shown = subscriptions
      .map((subscription, n) => ({ subscription, detail: details[n] }))
      .filter(({ detail }) => detail !== null)
      .sort((a, b) => a.subscription.name.localeCompare(b.subscription.name));
    $('#subscription-count').textContent = `(${shown.length})`;
    $('#no-subscriptions').hidden = shown.length > 0;
    if (shown.length) $('#host').textContent = shown[0].detail.series.host;
    const existing = new Map([...list.children].map((card) => [card.dataset.id, card]));
    const cards = shown.map(({ subscription, detail }) => {
      const card = existing.get(subscription.id) || newCard(subscription.id);
      fillCard(card, subscription, detail);
      return card;
    });
    list.replaceChildren(...cards);
    // Drawn once in the document, where they have a size.
    for (const [n, card] of cards.entries()) drawCharts(card, shown[n].detail.series);
  }

  function newCard(id) {
    const card = $('#subscription-template').content.firstElementChild.cloneNode(true);
    card.dataset.id = id;
    return card;
  }

  const number = (n) => Number(n || 0).toLocaleString('en');

  // A moment as local time, with the date unless it is today.
  function when(timestamp) {
    if (!timestamp) return '';
    const at = new Date(timestamp);
    if (Number.isNaN(at.getTime())) return String(timestamp);
    const today = at.toDateString() === new Date().toDateString();
    return today ? at.toLocaleTimeString() : at.toLocaleString();
  }

  function fillCard(card, subscription, { status, series }) {
    $('.name', card).textContent = subscription.name;
    $('.id', card).textContent = subscription.id;
    const badge = $('.status', card);
    badge.textContent = status.status;
    badge.dataset.status = status.status;
    const reason = $('.reason', card);
    const why = status.status_reason
      || (status.offline_message ? `Platform offline: ${status.offline_message}` : '');
    reason.textContent = why;
    reason.hidden = !why;
    for (const outcome of ['delivered', 'filtered', 'denied', 'dead_lettered']) {
      $(`.${outcome}`, card).textContent = number(status.counts[outcome]);
    }
    $('.rate', card).textContent = `${lastMinuteRate(series).toFixed(2)} /s`;
    const consumer = status.consumer;
    if (consumer) {
      const lags = consumer.partitions.filter((p) => p.lag >= 0);
      $('.lag', card).textContent = lags.length ? number(lags.reduce((sum, p) => sum + p.lag, 0)) : 'unknown';
      $('.lag', card).title = consumer.partitions.map((p) => `${p.topic}[${p.partition}]: ${p.lag}`).join('\n');
      $('.consumer', card).textContent = consumer.reason ? `${consumer.state}: ${consumer.reason}` : consumer.state;
    } else {
      $('.lag', card).textContent = '–';
      $('.consumer', card).textContent = 'not on this host';
    }
    fillActivity($('.activity tbody', card), status.recent_activity || []);
    fillDeadLetters($('.dead-letters tbody', card), status.dead_letters || []);
    $('.dead-letter-topic', card).textContent = status.dead_letter_topic;
  }

  // Delivered per second over the last minute: the newest buckets, the one
  // still filling included (so it reads a little low rather than nothing
  // right after a delivery).
  function lastMinuteRate(series) {
    const recent = series.points.slice(-Math.round(60 / series.bucket_seconds));
    return recent.reduce((sum, p) => sum + p.delivered, 0) / 60;
  }

  function row(cells) {
    const tr = document.createElement('tr');
    for (const [text, className] of cells) {
      const td = document.createElement('td');
      td.textContent = text;
      if (className) td.className = className;
      tr.append(td);
    }
    return tr;
  }

  function fillActivity(body, activity) {
    const rows = activity.slice(0, SHOWN_ENTRIES).map((entry) => {
      if (entry.event !== 'api_call') return row([[when(entry.timestamp)], [entry.event], ['']]);
      const code = entry.response_code;
      const ok = code >= 200 && code < 300;
      return row([
        [when(entry.timestamp)],
        [code ? String(code) : 'no answer', ok ? 'ok' : 'failed'],
        [entry.request],
      ]);
    });
    body.replaceChildren(...(rows.length ? rows : [row([['none yet', 'muted']])]));
  }

  function fillDeadLetters(body, letters) {
    const rows = letters.slice(0, SHOWN_ENTRIES).map((letter) => row([
      [when(letter.timestamp)],
      [`${number(letter.messages)} messages`],
      [letter.reason, 'failed'],
    ]));
    body.replaceChildren(...(rows.length ? rows : [row([['none', 'muted']])]));
  }

  function drawCharts(card, series) {
    const perSecond = (key) => series.points.map((p) => p[key] / series.bucket_seconds);
    draw($('.rate-chart', card), series, [
      { values: perSecond('delivered'), colour: COLOURS.delivered },
      { values: perSecond('filtered'), colour: COLOURS.filtered },
      { values: perSecond('denied'), colour: COLOURS.denied },
      { values: perSecond('dead_lettered'), colour: COLOURS.dead_lettered },
    ], (value) => `${formatValue(value)}/s`);
    draw($('.latency-chart', card), series, [
      { values: series.points.map((p) => p.latency_max_ms), colour: COLOURS.max },
      { values: series.points.map((p) => p.latency_mean_ms), colour: COLOURS.mean },
    ], (ms) => (ms >= 1000 ? `${formatValue(ms / 1000)} s` : `${formatValue(ms)} ms`));
  }

  // A line per series over the window, oldest left; null values are gaps.
  // `label` writes a value of the vertical axis. `data-points` counts the
  // buckets with something to show, for tests and for anyone inspecting the
  // page.
  function draw(canvas, series, lines, label) {
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext('2d');
    ctx.scale(ratio, ratio);
    const count = series.points.length;
    const values = lines.flatMap((line) => line.values).filter((v) => v !== null);
    const top = niceCeiling(Math.max(0, ...values));
    const marks = [0, 0.5, 1].map((fraction) => top * fraction);
    ctx.font = '11px system-ui, sans-serif';
    // Room on the left for the widest mark of the vertical axis.
    const widest = Math.max(...marks.map((value) => ctx.measureText(label(value)).width));
    const pad = { left: Math.ceil(widest) + 8, right: 8, top: 8, bottom: 18 };
    const plotWidth = width - pad.left - pad.right;
    const plotHeight = height - pad.top - pad.bottom;
    const x = (n) => pad.left + (count > 1 ? (n / (count - 1)) * plotWidth : 0);
    const y = (v) => pad.top + plotHeight - (top ? (v / top) * plotHeight : 0);

    ctx.clearRect(0, 0, width, height);
    ctx.fillStyle = '#6b7280';
    ctx.strokeStyle = '#e5e7eb';
    ctx.lineWidth = 1;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (const value of marks) {
      ctx.beginPath();
      ctx.moveTo(pad.left, Math.round(y(value)) + 0.5);
      ctx.lineTo(width - pad.right, Math.round(y(value)) + 0.5);
      ctx.stroke();
      ctx.fillText(label(value), pad.left - 4, y(value));
    }
    // The time axis, marked every five minutes back from now.
    ctx.textBaseline = 'top';
    const perFive = 300 / series.bucket_seconds;
    for (let back = 0; back < count; back += perFive) {
      const n = count - 1 - back;
      ctx.textAlign = back === 0 ? 'right' : 'center';
      ctx.fillText(back === 0 ? 'now' : `−${back / perFive * 5} min`, x(n), height - pad.bottom + 4);
    }
    ctx.textAlign = 'left';
    ctx.fillText(`−${Math.round((count * series.bucket_seconds) / 60)} min`, x(0), height - pad.bottom + 4);

    ctx.lineWidth = 2;
    ctx.lineJoin = 'round';
    for (const line of lines) {
      ctx.strokeStyle = line.colour;
      ctx.beginPath();
      let drawing = false;
      line.values.forEach((value, n) => {
        if (value === null) {
          drawing = false;
          return;
        }
        if (drawing) ctx.lineTo(x(n), y(value));
        else ctx.moveTo(x(n), y(value));
        drawing = true;
      });
      ctx.stroke();
      // A lone sample between gaps would draw nothing as a line.
      ctx.fillStyle = line.colour;
      line.values.forEach((value, n) => {
        const alone = value !== null && line.values[n - 1] == null && line.values[n + 1] == null;
        if (alone) {
          ctx.beginPath();
          ctx.arc(x(n), y(value), 2.5, 0, 2 * Math.PI);
          ctx.fill();
        }
      });
    }
    const shown = series.points.filter((_, n) => lines.some((line) => line.values[n])).length;
    canvas.dataset.points = String(shown);
  }

  // 1, 2 or 5 times a power of ten, at least `value` (1 for nothing).
  function niceCeiling(value) {
    if (value <= 0) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    return [1, 2, 5, 10].map((m) => m * power).find((step) => step >= value);
  }

  function formatValue(value) {
    if (value >= 100 || Number.isInteger(value)) return Math.round(value).toLocaleString('en');
    return value.toPrecision(2);
  }

  function renderPlugins(plugins) {
    const body = $('#plugins tbody');
    body.replaceChildren(...plugins.map((plugin) => row([
      [plugin.name],
      [plugin.version],
      [plugin.role],
      [plugin.shared ? 'shared' : `tenant ${plugin.tenant_id}`],
      [`${number(Math.round(plugin.size / 1024))} KiB`],
      [`${number(Math.round(plugin.limits.memory_bytes / (1024 * 1024)))} MiB`],
      [`${number(plugin.limits.cpu_deadline_ms)} ms`],
      [when(plugin.created_at)],
    ])));
    $('#plugins').hidden = plugins.length === 0;
    $('#no-plugins').hidden = plugins.length > 0;
  }

  function start() {
    $('#login').addEventListener('submit', (event) => {
      event.preventDefault();
      const given = $('#token').value.trim();
      if (!given) {
        showError('Enter a token first.');
        return;
      }
      sessionStorage.setItem(STORAGE_KEY, given);
      $('#token').value = '';
      open();
    });
    $('#logout').addEventListener('click', () => forget());
    $('#switch').addEventListener('submit', flip);
    window.addEventListener('hashchange', () => {
      if (tokenFromFragment()) open();
    });
    tokenFromFragment();
    if (token()) open();
    else showLogin();
  }

  start();
})();
