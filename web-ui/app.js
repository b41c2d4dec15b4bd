/* Farmgate management UI: one page, no framework, no build step.
 * Security rules (issue 6): the DOM is built with createElement/textContent only (no
 * innerHTML & co., no eval, no inline handlers), URL path segments go through
 * encodeURIComponent, the CSRF token and PINs live in memory only. */
'use strict';
(() => {
  const S = { state: null, csrf: null, next: null, view: 0, timer: 0, verify: new Map() };
  const main = document.getElementById('main');
  const enc = encodeURIComponent;

  /* ---- DOM helpers ---------------------------------------------------- */
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'text') el.textContent = v;
      else if (k === 'class') el.className = v;
      else if (k === 'value') el.value = v;
      else if (k === 'checked') el.checked = true;
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of kids.flat(Infinity)) if (c !== null && c !== undefined && c !== false) el.append(c);
    return el;
  }
  const btn = (text, test, onclick, cls) =>
    h('button', { type: 'button', class: cls || '', 'data-test': test, onclick, text });
  const alive = (v) => v === S.view;

  function msgBox(test) {
    return h('div', { class: 'msg', role: 'alert', hidden: true, 'data-test': test || 'error' });
  }
  function say(box, text, kind) {
    box.className = 'msg ' + (kind || 'error');
    box.setAttribute('role', kind === 'ok' || kind === 'info' ? 'status' : 'alert');
    box.textContent = text instanceof Error ? text.message : String(text);
    box.hidden = false;
  }

  let bannerTimer = 0;
  function flash(text, kind) {
    const b = document.getElementById('banner');
    clearTimeout(bannerTimer);
    b.replaceChildren(h('span', { text }), btn('Dismiss', 'dismiss', () => { b.hidden = true; }, 'link'));
    b.className = 'banner ' + (kind || 'ok');
    b.hidden = false;
    if (kind !== 'error') bannerTimer = setTimeout(() => { b.hidden = true; }, 6000);
  }

  /* busy(button, promise-returning fn): disable while it runs */
  async function busy(b, fn) {
    if (b.disabled) return;
    b.disabled = true;
    b.setAttribute('aria-busy', 'true');
    try { return await fn(); } finally { b.disabled = false; b.removeAttribute('aria-busy'); }
  }

  /* ---- formatting ----------------------------------------------------- */
  const num = (n) => (typeof n === 'number' && isFinite(n) ? n.toLocaleString('en-US') : '–');
  const rate = (n) => (typeof n === 'number' ? (n < 10 ? n.toFixed(1) : Math.round(n).toLocaleString('en-US')) : '–');
  const ms = (n) => (typeof n === 'number' ? num(Math.round(n)) + ' ms' : '–');
  function bytes(n) {
    if (typeof n !== 'number') return '–';
    const u = ['B', 'KB', 'MB', 'GB', 'TB'];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(n < 10 ? 1 : 0) : n) + ' ' + u[i];
  }
  function uptime(s) {
    if (typeof s !== 'number') return '–';
    const d = Math.floor(s / 86400), hh = Math.floor(s % 86400 / 3600), mm = Math.floor(s % 3600 / 60);
    return (d ? d + ' d ' : '') + (d || hh ? hh + ' h ' : '') + mm + ' min';
  }
  function any(v) {
    if (v === undefined || v === null || v === '') return '–';
    if (Array.isArray(v)) return v.length ? v.map(any).join(', ') : '–';
    if (typeof v === 'object') return Object.entries(v).map(([k, x]) => k + ': ' + any(x)).join(', ');
    if (typeof v === 'boolean') return v ? 'yes' : 'no';
    return String(v);
  }
  const list = (d, key) => (Array.isArray(d) ? d : (d && Array.isArray(d[key]) ? d[key] : []));

  /* ---- API ------------------------------------------------------------ */
  class ApiError extends Error {
    constructor(status, message, path, retryAfter) {
      super(message);
      this.status = status;
      this.path = path;
      this.retryAfter = retryAfter;
    }
  }
  const WHY = {
    400: 'the appliance refused these values', 401: 'not signed in',
    403: 'refused (CSRF or origin check): reload the page', 404: 'not found',
    409: 'conflict with the current configuration', 429: 'too many attempts: wait and try again',
    502: 'the data plane refused the change or is not running',
  };
  async function api(method, path, body, opt) {
    opt = opt || {};
    const headers = { Accept: 'application/json' };
    const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
    if (method !== 'GET') {
      headers['Content-Type'] = 'application/json';
      if (S.csrf) headers['X-CSRF-Token'] = S.csrf;
      init.body = JSON.stringify(body === undefined ? {} : body);
    }
    let r;
    try {
      r = await fetch('/api/v1' + path, init);
    } catch (e) {
      throw new ApiError(0, 'The appliance did not answer (' + e.message + ').');
    }
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    if (r.ok) return opt.text ? text : data;
    if (r.status === 403 && method !== 'GET' && !opt.retried && !opt.noAuth) {
      /* the session's CSRF token may have been rotated: read it again once */
      const st = await api('GET', '/auth/state', undefined, { noAuth: true }).catch(() => null);
      if (st && st.csrfToken && st.csrfToken !== S.csrf) {
        S.csrf = st.csrfToken;
        return api(method, path, body, Object.assign({}, opt, { retried: true }));
      }
    }
    let m = data && typeof data.error === 'string' ? data.error : '';
    if (r.status === 401 && !opt.noAuth) {
      S.csrf = null;
      S.state = null;
      if (!/^#\/(login|setup)/.test(location.hash)) { S.next = location.hash; location.hash = '#/login'; }
      m = m || 'Your session has ended: sign in again.';
    }
    if (r.status === 404 && !m) {
      m = 'Not available: this appliance does not offer ' + method + ' /api/v1' + path + ' (404).';
    }
    const why = m || WHY[r.status] || r.statusText || 'error';
    throw new ApiError(r.status, 'HTTP ' + r.status + ': ' + why, data && data.path,
      r.headers.get('Retry-After'));
  }

  function download(content, name, type) {
    const url = URL.createObjectURL(content instanceof Blob ? content : new Blob([content], { type }));
    const a = h('a', { href: url, download: name, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 30000);
  }

  function readFile(file, asBuffer) {
    return new Promise((resolve, reject) => {
      const fr = new FileReader();
      fr.onload = () => resolve(fr.result);
      fr.onerror = () => reject(new Error('Could not read ' + file.name));
      if (asBuffer) fr.readAsArrayBuffer(file); else fr.readAsText(file);
    });
  }
  function b64(buf) {
    const u8 = new Uint8Array(buf);
    let s = '';
    for (let i = 0; i < u8.length; i += 0x8000) s += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000));
    return btoa(s);
  }

  async function copy(text, b) {
    let ok = false;
    try {
      if (navigator.clipboard && window.isSecureContext) { await navigator.clipboard.writeText(text); ok = true; }
    } catch (e) { ok = false; }
    if (!ok) {
      const ta = h('textarea', { class: 'offscreen', readonly: true, 'aria-hidden': 'true' });
      ta.value = text;
      document.body.append(ta);
      ta.select();
      try { ok = document.execCommand('copy'); } catch (e) { ok = false; }
      ta.remove();
    }
    const old = b.textContent;
    b.textContent = ok ? 'Copied' : 'Press Ctrl+C';
    if (!ok) window.getSelection().selectAllChildren(b.previousElementSibling || b);
    setTimeout(() => { b.textContent = old; }, 1500);
  }

  /* ---- model binding for editors -------------------------------------- */
  function getp(o, path) {
    for (const k of path) { if (o === null || typeof o !== 'object') return undefined; o = o[k]; }
    return o;
  }
  function setp(o, path, v) {
    const chain = [];
    let cur = o;
    for (const k of path.slice(0, -1)) {
      if (cur[k] === null || typeof cur[k] !== 'object') cur[k] = {};
      chain.push([cur, k]);
      cur = cur[k];
    }
    const last = path[path.length - 1];
    if (v === undefined) delete cur[last]; else cur[last] = v;
    for (let i = chain.length - 1; i >= 0; i--) { /* drop objects left empty */
      const [p, k] = chain[i];
      if (!Array.isArray(p[k]) && !Object.keys(p[k]).length) delete p[k]; else break;
    }
  }
  const pathStr = (base, path) => path.reduce((s, k) => (typeof k === 'number' ? s + '[' + k + ']' : (s ? s + '.' : '') + k), base);

  let fid = 0;
  /* field(model, path, spec): a labelled input bound to model at path.
   * spec: {label, kind: text|int|dur|bool|select|list, def, options, help, base, auto} */
  function field(model, path, spec) {
    const id = 'f' + (++fid);
    const dp = pathStr(spec.base || '', path);
    const cur = getp(model, path);
    const had = cur !== undefined;
    const kind = spec.kind || 'text';
    let input;
    if (kind === 'bool') {
      const val = had ? !!cur : !!spec.def;
      input = h('input', { type: 'checkbox', id, name: dp, checked: val });
      input.addEventListener('change', () => {
        setp(model, path, input.checked === !!spec.def && !had ? undefined : input.checked);
      });
    } else if (kind === 'select') {
      input = h('select', { id, name: dp },
        h('option', { value: '', text: spec.def ? '(default: ' + spec.def + ')' : '(none)' }),
        spec.options.map((o) => h('option', { value: o, text: o })));
      if (had && !spec.options.includes(cur)) input.append(h('option', { value: cur, text: String(cur) }));
      input.value = had ? cur : '';
      input.addEventListener('change', () => setp(model, path, input.value || undefined));
    } else {
      const shown = had ? (Array.isArray(cur) ? cur.join(', ') : String(cur)) : '';
      input = h('input', {
        type: spec.type || 'text', id, name: dp, value: shown, autocomplete: spec.auto || 'off',
        spellcheck: 'false', inputmode: kind === 'int' ? 'numeric' : undefined,
        placeholder: spec.ph !== undefined ? spec.ph : (spec.def !== undefined ? String(spec.def) : undefined),
        required: spec.required,
      });
      input.addEventListener('input', () => {
        const t = input.value.trim();
        let v = t === '' ? undefined : t;
        if (v !== undefined && (kind === 'int' || kind === 'dur') && /^-?\d+$/.test(t)) v = Number(t);
        if (v !== undefined && kind === 'list') v = t.split(/[\s,]+/).filter(Boolean);
        setp(model, path, v);
      });
    }
    if (spec.aria) input.setAttribute('aria-label', spec.aria);
    const help = spec.help ? h('small', { class: 'help', id: id + 'h', text: spec.help }) : null;
    if (help) input.setAttribute('aria-describedby', id + 'h');
    if (spec.bare) { input.setAttribute('data-path', dp); return input; }
    return h('div', { class: 'field' + (kind === 'bool' ? ' check' : ''), 'data-path': dp },
      kind === 'bool' ? [input, h('label', { for: id, text: spec.label })] : [h('label', { for: id, text: spec.label }), input],
      help);
  }

  function clearErrors(form) {
    form.querySelectorAll('.invalid').forEach((x) => x.classList.remove('invalid'));
    form.querySelectorAll('[aria-invalid]').forEach((x) => x.removeAttribute('aria-invalid'));
    form.querySelectorAll('[data-test="field-error"]').forEach((x) => x.remove());
  }

  /* show a 400's message next to the field its "path" names */
  function showPathError(form, box, e, strip) {
    clearErrors(form);
    say(box, e);
    if (!e.path) return;
    let p = String(e.path).replace(/^\$\.?/, '');
    p = strip(p);
    let el = null;
    while (p && !(el = form.querySelector('[data-path="' + CSS.escape(p) + '"]'))) {
      const q = p.replace(/(\.[^.[\]]+|\[\d+\])$/, ''); /* try the enclosing object */
      p = q === p ? '' : q;
    }
    box.append(h('span', { class: 'path', text: ' (' + e.path + ')' }));
    if (!el) return;
    const inp = el.matches('input,select,textarea') ? el : el.querySelector('input,select,textarea');
    el.classList.add('invalid');
    if (inp) inp.setAttribute('aria-invalid', 'true');
    const note = h('small', { class: 'field-msg', 'data-test': 'field-error', text: e.message });
    if (el.matches('input,select,textarea')) el.after(note); else el.append(note);
    (inp || el).focus({ preventScroll: true });
    el.scrollIntoView({ block: 'center' });
  }

  /* ---- auth ----------------------------------------------------------- */
  async function authState() {
    const st = await api('GET', '/auth/state', undefined, { noAuth: true });
    S.state = st || {};
    if (S.state.csrfToken) S.csrf = S.state.csrfToken;
    return S.state;
  }

  /* lets password managers file the password under a name */
  const userField = () => h('input', { type: 'text', name: 'username', autocomplete: 'username', value: 'admin', hidden: true, tabindex: '-1', 'aria-hidden': 'true' });

  function authCard(title, intro, form) {
    return h('section', { class: 'card auth' }, h('h1', { text: title }), intro, form);
  }

  function pageLogin() {
    const box = msgBox('login-error');
    const pw = h('input', { type: 'password', id: 'password', name: 'password', autocomplete: 'current-password', required: true });
    const b = h('button', { type: 'submit', id: 'login', class: 'primary', text: 'Sign in' });
    const form = h('form', { id: 'login-form' }, box, userField(),
      h('div', { class: 'field' }, h('label', { for: 'password', text: 'Password' }), pw),
      h('div', { class: 'bar' }, b));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      busy(b, async () => {
        const password = pw.value;
        try {
          const r = await api('POST', '/auth/login', { password }, { noAuth: true });
          pw.value = '';
          S.csrf = (r && r.csrfToken) || null;
          await authState().catch(() => null);
          if (!S.state || !S.state.loggedIn) S.state = { passwordSet: true, loggedIn: true };
          const next = S.next && !/^#\/(login|setup)/.test(S.next) ? S.next : '#/dashboard';
          S.next = null;
          location.hash = next;
        } catch (e) {
          pw.value = '';
          if (e.status === 401) say(box, 'Wrong password.');
          else if (e.status === 429) say(box, 'Too many attempts.' + (e.retryAfter ? ' Try again in ' + e.retryAfter + ' s.' : ' Wait a moment and try again.'));
          else say(box, e);
          pw.focus();
        }
      });
    });
    main.append(authCard('Sign in', h('p', { class: 'muted', text: 'Farmgate management. Sign in with the administrator password.' }), form));
    pw.focus();
  }

  function pageSetup() {
    const box = msgBox('setup-error');
    const code = h('input', { type: 'text', id: 'setup-code', name: 'setupCode', autocomplete: 'off', spellcheck: 'false', required: true, 'aria-describedby': 'setup-code-h' });
    const p1 = h('input', { type: 'password', id: 'new-password', name: 'password', autocomplete: 'new-password', required: true });
    const p2 = h('input', { type: 'password', id: 'new-password2', name: 'password2', autocomplete: 'new-password', required: true });
    const b = h('button', { type: 'submit', id: 'setup', class: 'primary', text: 'Set password' });
    const form = h('form', { id: 'setup-form' }, box, userField(),
      h('div', { class: 'field' }, h('label', { for: 'setup-code', text: 'Setup code' }), code,
        h('small', { class: 'help', id: 'setup-code-h', text: 'Printed on the appliance console at first start (also in a file only root can read).' })),
      h('div', { class: 'field' }, h('label', { for: 'new-password', text: 'New password' }), p1),
      h('div', { class: 'field' }, h('label', { for: 'new-password2', text: 'New password again' }), p2),
      h('div', { class: 'bar' }, b));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      if (!p1.value) { say(box, 'Choose a password.'); p1.focus(); return; }
      if (p1.value !== p2.value) { say(box, 'The two passwords differ.'); p2.value = ''; p2.focus(); return; }
      busy(b, async () => {
        try {
          const r = await api('POST', '/auth/setup', { setupCode: code.value.trim(), password: p1.value }, { noAuth: true });
          p1.value = p2.value = '';
          if (r && r.csrfToken) S.csrf = r.csrfToken;
          const st = await authState().catch(() => ({ passwordSet: true }));
          if (st.loggedIn) { flash('Password set. Welcome to Farmgate.'); location.hash = '#/dashboard'; } else {
            flash('Password set. Sign in with it.');
            location.hash = '#/login';
          }
        } catch (e) {
          say(box, e.status === 401 || e.status === 403 ? 'Wrong setup code (' + e.message + ')' : e);
        }
      });
    });
    main.append(authCard('First-time setup',
      h('p', { class: 'muted', text: 'No administrator password is set yet. Enter the setup code shown on the appliance console and choose the password.' }), form));
    code.focus();
  }

  document.getElementById('logout').addEventListener('click', async () => {
    try { await api('POST', '/auth/logout', {}, { noAuth: true }); } catch (e) { /* signed out anyway */ }
    S.csrf = null;
    S.state = { passwordSet: true, loggedIn: false };
    location.hash = '#/login';
  });

  /* ---- dashboard ------------------------------------------------------ */
  const SERVER_STATES = [
    ['Available', 'Make Server Available', 'action-available', 'Available'],
    ['DisallowNewConnections', 'Disallow New Connections', 'action-drain', 'Disallow New Connections'],
    ['UnavailableGracefully', 'Make Server Unavailable Gracefully', 'action-stop-graceful', 'Unavailable Gracefully'],
    ['UnavailableImmediately', 'Make Server Unavailable Immediately', 'action-stop-immediate', 'Unavailable Immediately'],
  ];
  const STATE_WORD = Object.fromEntries(SERVER_STATES.map((x) => [x[0], x[3]]));
  const STATE_CLASS = { Available: 'ok', DisallowNewConnections: 'warn', UnavailableGracefully: 'bad', UnavailableImmediately: 'bad', Online: 'ok', Offline: 'bad' };
  const RESULT_CLASS = { Success: 'ok' };

  function setBadge(el, value, word) {
    el.textContent = word || value || '–';
    el.className = 'badge ' + (STATE_CLASS[value] || 'neutral');
    el.setAttribute('data-state', value || '');
  }

  function probeText(hl) {
    if (!hl) return 'No probe yet';
    const parts = ['Last probe: ' + (hl.lastResult || 'none')];
    if (hl.lastStatus) parts.push('HTTP ' + hl.lastStatus);
    if (typeof hl.lastTimeMs === 'number') parts.push(hl.lastTimeMs + ' ms');
    if (hl.lastReason) parts.push(hl.lastReason);
    if (hl.consecutiveFailures) parts.push(hl.consecutiveFailures + ' consecutive failures');
    if (hl.liveFailures) parts.push(hl.liveFailures + ' live-traffic failures');
    if (hl.since) parts.push('since ' + hl.since);
    return parts.join(' · ');
  }

  function statCells(prefix) {
    const defs = [['requestsPerSecond', 'Requests/s', rate], ['responseTimeMs', 'Response time', ms],
      ['currentRequests', 'Current', num], ['totalRequests', 'Total', num], ['failedRequests', 'Failed', num]];
    return defs.map(([k, label, f]) => ({ k, label, f, el: h(prefix, { 'data-label': label, 'data-test': 'c-' + k, class: 'n' }) }));
  }
  function setStats(cells, c, bytesEl) {
    c = c || {};
    for (const x of cells) x.el.textContent = x.f(c[x.k]);
    const failed = cells.find((x) => x.k === 'failedRequests');
    failed.el.classList.toggle('hot', (c.failedRequests || 0) > 0);
    if (bytesEl) {
      bytesEl.textContent = bytes(c.bytesSent) + ' / ' + bytes(c.bytesReceived);
      bytesEl.title = num(c.bytesSent) + ' bytes sent, ' + num(c.bytesReceived) + ' received';
    }
  }

  function serverRow(farm, s, act) {
    const st = h('span', { 'data-test': 'state' });
    const hl = h('span', { 'data-test': 'health', tabindex: '0' });
    const reason = h('small', { class: 'reason', 'data-test': 'health-reason' });
    const cells = statCells('td');
    const by = h('td', { 'data-label': 'Sent / received', 'data-test': 'c-bytes', class: 'n' });
    const acts = SERVER_STATES.map(([state, words, test]) => {
      const b = btn(words, test, () => busy(b, () => act(s.server, state, words)), 'small');
      b.setAttribute('data-state', state);
      return b;
    });
    const cfg = h('small', { class: 'muted', 'data-test': 'server-config' });
    const tr = h('tr', { 'data-test': 'server-' + farm + '-' + s.server },
      h('th', { scope: 'row', 'data-label': 'Server' }, h('div', {}, h('span', { class: 'sv', text: s.server }), cfg)),
      h('td', { 'data-label': 'State' }, st), h('td', { 'data-label': 'Health' }, h('div', {}, hl, reason)),
      cells.map((c) => c.el), by,
      h('td', { 'data-label': 'Actions', class: 'acts' }, h('div', { class: 'btns' }, acts)));
    const update = (x) => {
      setBadge(st, x.state, STATE_WORD[x.state]);
      const ok = x.healthy !== false;
      hl.textContent = ok ? '✓ Healthy' : '✗ Unhealthy';
      hl.className = 'badge ' + (ok ? 'ok' : 'bad');
      hl.setAttribute('data-healthy', String(ok));
      hl.title = probeText(x.health);
      hl.setAttribute('aria-label', hl.textContent + '. ' + hl.title);
      reason.textContent = !ok && x.health ? [x.health.lastResult, x.health.lastReason].filter(Boolean).join(': ') : '';
      /* the server's name is address:httpPort (its identity); a farm reached over TLS uses httpsPort */
      cfg.textContent = 'HTTP ' + x.httpPort + ' · HTTPS ' + x.httpsPort + ' · weight ' + (x.weight === undefined ? '–' : x.weight) +
        (x.enabled === false ? ' · disabled in configuration' : '');
      setStats(cells, x.counters, by);
      for (const b of acts) {
        const cur = b.getAttribute('data-state') === x.state;
        b.classList.toggle('current', cur);
        b.setAttribute('aria-pressed', String(cur));
      }
    };
    return { el: tr, update };
  }

  function verifyTable(results) {
    return h('table', { class: 'mini' },
      h('thead', {}, h('tr', {}, ['Server', 'Result', 'HTTP status', 'Time', 'Reason'].map((t) => h('th', { scope: 'col', text: t })))),
      h('tbody', {}, results.map((r) => h('tr', { 'data-test': 'verify-' + r.server },
        h('td', { 'data-label': 'Server', text: r.server }),
        h('td', { 'data-label': 'Result' }, h('span', { class: 'badge ' + (RESULT_CLASS[r.result] || 'bad'), 'data-test': 'result', text: r.result || '–' })),
        h('td', { 'data-label': 'HTTP status', text: r.status ? String(r.status) : 'none' }),
        h('td', { 'data-label': 'Time', text: ms(r.timeMs) }),
        h('td', { 'data-label': 'Reason', text: r.reason || '' })))));
  }
  function showVerify(box, d) {
    const results = list(d, 'results');
    box.replaceChildren(h('h3', { text: 'Verify URL Test' }),
      h('p', { class: 'muted', text: 'Run at ' + new Date().toLocaleTimeString() + ', one probe of every server.' }),
      results.length ? verifyTable(results) : h('p', { text: 'No result: the farm has no server or no URL test (healthCheck.url).' }));
    box.hidden = false;
  }

  function farmView(f, refresh) {
    const name = f.name;
    const fenc = enc(name);
    const box = msgBox('farm-error');
    const st = h('span', { 'data-test': 'farm-state' });
    const dis = h('span', { class: 'badge neutral', text: 'Disabled in configuration', hidden: true });
    const hc = h('p', { class: 'muted small', 'data-test': 'health-url' });
    const cells = statCells('dd');
    const by = h('dd', { 'data-test': 'c-bytes' });
    const stats = h('dl', { class: 'stats' }, cells.map((c) => h('div', {}, h('dt', { text: c.label }), c.el)),
      h('div', {}, h('dt', { text: 'Sent / received' }), by));
    const run = (b, what, fn) => busy(b, async () => {
      try { await fn(); box.hidden = true; flash(what); refresh(); } catch (e) { say(box, e); }
    });
    const on = btn('Bring Online', 'farm-online', () => run(on, 'Farm ' + name + ' is online.', () => api('POST', '/farms/' + fenc + '/state', { state: 'Online' })));
    const off = btn('Take Offline', 'farm-offline', () => run(off, 'Farm ' + name + ' is offline.', () => api('POST', '/farms/' + fenc + '/state', { state: 'Offline' })));
    const vbox = h('div', { class: 'verify', 'data-test': 'verify-results', hidden: true });
    const ver = btn('Verify URL Test', 'verify', () => busy(ver, async () => {
      try {
        const d = await api('POST', '/farms/' + fenc + '/verify', {});
        S.verify.set(name, d);
        showVerify(vbox, d);
        box.hidden = true;
      } catch (e) { say(box, e); }
    }));
    const rst = btn('Reset counters', 'reset', () => run(rst, 'Counters of ' + name + ' reset.', () => api('POST', '/farms/' + fenc + '/reset', {})));
    const act = async (server, state, words) => {
      try {
        await api('POST', '/farms/' + fenc + '/servers/' + enc(server) + '/state', { state });
        box.hidden = true;
        flash(server + ': ' + words + '.');
        refresh();
      } catch (e) { say(box, e); }
    };
    const rows = new Map();
    const servers = f.servers || [];
    for (const s of servers) rows.set(s.server, serverRow(name, s, act));
    const table = servers.length ? h('table', { class: 'servers' },
      h('caption', { class: 'sr', text: 'Servers of farm ' + name }),
      h('thead', {}, h('tr', {}, ['Server', 'State', 'Health', 'Requests/s', 'Response time', 'Current', 'Total', 'Failed', 'Sent / received', 'Actions']
        .map((t) => h('th', { scope: 'col', text: t })))),
      h('tbody', {}, [...rows.values()].map((r) => r.el))) : h('p', { class: 'muted', text: 'This farm has no server yet.' });
    const el = h('section', { class: 'card farm', 'data-test': 'farm-' + name },
      h('div', { class: 'farmhead' },
        h('h2', {}, h('a', { href: '#/farms/' + fenc, text: name, title: 'Edit farm ' + name })), st, dis),
      hc, stats,
      h('div', { class: 'bar' }, on, off, ver, rst, h('a', { class: 'button', href: '#/farms/' + fenc, 'data-test': 'edit-farm', text: 'Edit farm' })),
      box, h('div', { class: 'tablewrap' }, table), vbox);
    if (S.verify.has(name)) showVerify(vbox, S.verify.get(name));
    const update = (x) => {
      setBadge(st, x.state);
      dis.hidden = x.enabled !== false;
      on.classList.toggle('current', x.state === 'Online');
      off.classList.toggle('current', x.state === 'Offline');
      const u = x.healthCheck && x.healthCheck.url;
      hc.textContent = u ? 'URL test: ' + u + (x.healthCheck.intervalMs ? ', every ' + x.healthCheck.intervalMs / 1000 + ' s' : '') : 'No URL test configured.';
      setStats(cells, x.counters, by);
      for (const s of x.servers || []) { const r = rows.get(s.server); if (r) r.update(s); }
    };
    return { el, key: servers.map((s) => s.server).join('\n'), update };
  }

  function pageDashboard(v) {
    const farms = h('div', { class: 'farms', 'data-test': 'farms' });
    const upd = h('span', { class: 'muted small', 'data-test': 'updated', 'aria-live': 'off' });
    const box = msgBox('status-error');
    main.append(h('div', { class: 'pagehead' }, h('h1', { text: 'Dashboard' }), upd,
      h('a', { class: 'button primary', href: '#/add-farm', 'data-test': 'add-farm', text: 'Add farm' })), box, farms);
    const views = new Map();
    let running = false, again = false;
    const refresh = () => { if (running) { again = true; return; } clearTimeout(S.timer); tick(); };
    async function tick() {
      if (document.hidden) { S.timer = setTimeout(tick, 2000); return; } /* no polling from a hidden tab */
      running = true;
      try {
        const d = await api('GET', '/status');
        if (!alive(v)) return;
        box.hidden = true;
        draw(list(d, 'farms'));
        upd.textContent = 'Live, updated ' + new Date().toLocaleTimeString();
      } catch (e) {
        if (!alive(v)) return;
        say(box, e);
        upd.textContent = 'Live updates failing; retrying every 2 s';
      } finally {
        running = false;
      }
      if (!alive(v)) return;
      if (again) { again = false; tick(); } else S.timer = setTimeout(tick, 2000);
    }
    function draw(fs) {
      const seen = new Set();
      let i = 0;
      for (const f of fs) {
        if (!f || typeof f.name !== 'string') continue;
        seen.add(f.name);
        let fv = views.get(f.name);
        const key = (f.servers || []).map((s) => s.server).join('\n');
        if (!fv || fv.key !== key) {
          const nv = farmView(f, refresh);
          if (fv) fv.el.replaceWith(nv.el);
          fv = nv;
          views.set(f.name, fv);
        }
        fv.update(f);
        if (farms.children[i] !== fv.el) farms.insertBefore(fv.el, farms.children[i] || null);
        i++;
      }
      for (const [n, fv] of views) if (!seen.has(n)) { fv.el.remove(); views.delete(n); }
      const empty = farms.querySelector('[data-test="no-farms"]');
      if (!views.size && !empty) {
        farms.append(h('p', { class: 'card muted', 'data-test': 'no-farms' }, 'No farm is configured yet. ',
          h('a', { href: '#/add-farm', text: 'Add a farm' }), '.'));
      } else if (views.size && empty) empty.remove();
    }
    tick();
  }

  /* ---- certificates on the tokens (shared by the farm editor) -------- */
  async function tokenCerts() {
    const tokens = list(await api('GET', '/tokens'), 'tokens');
    const out = [];
    for (const t of tokens) {
      try {
        for (const c of list(await api('GET', '/tokens/' + enc(t.name) + '/certificates'), 'certificates')) out.push({ token: t.name, cert: c });
      } catch (e) { /* a token without certificates or not logged in */ }
    }
    return { tokens, certs: out };
  }
  const certName = (c) => (c.label || c.subject || c.sha256 || '?') + (c.subject && c.label ? ' (' + c.subject + ')' : '');

  async function listFarms() {
    try {
      const d = await api('GET', '/farms');
      const fs = Array.isArray(d) ? d : list(d, 'webFarms').length ? d.webFarms : list(d, 'farms');
      return fs.map((f) => (typeof f === 'string' ? f : f && f.name)).filter(Boolean);
    } catch (e) {
      return list(await api('GET', '/status'), 'farms').map((f) => f.name);
    }
  }
  const unwrapFarm = (d) => (d && d.farm && typeof d.farm === 'object' ? d.farm : d);

  /* ---- farm editor ---------------------------------------------------- */
  const ALGOS = ['WeightedRoundRobin', 'LeastRequests', 'LeastResponseTime', 'WeightedTotalTraffic', 'RequestHash'];

  function fieldset(legend, test, ...kids) {
    return h('fieldset', { 'data-test': test }, h('legend', { text: legend }), h('div', { class: 'grid' }, kids));
  }

  function pageFarm(v, name) {
    const isNew = name === null;
    const head = h('h1', { text: isNew ? 'Add farm' : 'Farm ' + name });
    const box = msgBox('form-error');
    main.append(h('div', { class: 'pagehead' }, head, h('a', { href: '#/dashboard', text: 'Back to the dashboard' })), box);
    if (isNew) { build({ name: '', servers: [{ address: '', httpPort: 80 }] }); return; }
    api('GET', '/farms/' + enc(name)).then((d) => { if (alive(v)) build(unwrapFarm(d) || {}); }, (e) => { if (alive(v)) say(box, e); });

    function build(farm) {
      if (!Array.isArray(farm.servers)) farm.servers = [];
      const F = (path, spec) => field(farm, path, spec);
      const tbody = h('tbody');
      const drawServers = () => {
        tbody.replaceChildren(...farm.servers.map((s, i) => {
          const n = 'Server ' + (i + 1) + ' ';
          const c = (k, label, spec) => h('td', { 'data-label': label, 'data-path': 'servers[' + i + '].' + k },
            field(s, [k], Object.assign({ bare: true, base: 'servers[' + i + ']', aria: n + label }, spec)));
          return h('tr', { 'data-test': 'edit-server-' + i, 'data-path': 'servers[' + i + ']' },
            c('address', 'Address', { required: true, ph: '10.0.0.11' }), c('httpPort', 'HTTP port', { kind: 'int', def: 80 }),
            c('httpsPort', 'HTTPS port', { kind: 'int', def: 443 }), c('weight', 'Weight', { kind: 'int', def: 100 }),
            c('hostName', 'Host name', { ph: '(none)' }), c('enabled', 'Enabled', { kind: 'bool', def: true }),
            h('td', { 'data-label': '' }, btn('Remove', 'remove-server', () => { farm.servers.splice(i, 1); drawServers(); }, 'small danger')));
        }));
      };
      drawServers();
      const hash = F(['protocol', 'clientCertHash'], { label: 'Client certificate thumbprint (clientCertHash)', help: 'SHA-1 or SHA-256 of a certificate on the token; its key signs on the token.' });
      const hashInput = hash.querySelector('input');
      const pick = h('select', { id: 'cert-pick', 'data-test': 'cert-picker' }, h('option', { value: '', text: 'Loading certificates…' }));
      pick.disabled = true;
      tokenCerts().then(({ tokens, certs }) => {
        pick.replaceChildren(h('option', { value: '', text: certs.length ? 'Pick a certificate on the token…' : 'No certificate on any token' }),
          ...certs.map(({ token, cert }) => h('option', { value: JSON.stringify([token, cert.sha256 || cert.sha1]), text: token + ': ' + certName(cert) + ', until ' + (cert.notAfter || '?') })));
        pick.disabled = !certs.length;
        pick.addEventListener('change', () => {
          if (!pick.value) return;
          const [token, th] = JSON.parse(pick.value);
          hashInput.value = th;
          hashInput.dispatchEvent(new Event('input'));
          if (tokens.length > 1) setp(farm, ['protocol', 'clientCertToken'], token);
          const ti = form.querySelector('[name="protocol.clientCertToken"]');
          if (ti && tokens.length > 1) ti.value = token;
        });
      }, (e) => { pick.replaceChildren(h('option', { value: '', text: 'Certificates unavailable (' + e.message + ')' })); });

      const vres = h('div', { class: 'verify', 'data-test': 'verify-results', hidden: true });
      const vbox = msgBox('verify-error');
      const testNow = btn('Test now', 'test-now', () => busy(testNow, async () => {
        vbox.hidden = true;
        try { showVerify(vres, await api('POST', '/farms/' + enc(name) + '/verify', {})); } catch (e) { say(vbox, e); }
      }));
      if (isNew) testNow.disabled = true;
      const saveB = h('button', { type: 'submit', class: 'primary', 'data-test': 'save', text: isNew ? 'Create farm' : 'Save and apply' });
      const delB = isNew ? null : btn('Delete farm', 'delete-farm', () => {
        const yes = btn('Delete ' + name, 'confirm-delete', () => busy(yes, async () => {
          try {
            await api('DELETE', '/farms/' + enc(name));
            S.verify.delete(name);
            flash('Farm ' + name + ' deleted.');
            location.hash = '#/dashboard';
          } catch (e) { say(box, e); }
        }), 'danger');
        const no = btn('Cancel', 'cancel-delete', () => { conf.remove(); delB.hidden = false; });
        const conf = h('span', { class: 'confirm', role: 'group', 'aria-label': 'Confirm deletion' }, 'Delete this farm from the configuration? ', yes, no);
        delB.hidden = true;
        delB.after(conf);
        no.focus();
      }, 'danger');

      const form = h('form', { class: 'editor', novalidate: true, 'data-test': 'farm-form' },
        fieldset('Farm', 'fs-general',
          F(['name'], { label: 'Name', required: true, help: 'Used in rules as http://<name>/…' }),
          F(['enabled'], { label: 'Enabled (off: the farm answers 503)', kind: 'bool', def: true })),
        h('fieldset', { 'data-test': 'fs-servers', 'data-path': 'servers' }, h('legend', { text: 'Servers' }),
          h('div', { class: 'tablewrap' }, h('table', { class: 'servers edit' },
            h('thead', {}, h('tr', {}, ['Address', 'HTTP port', 'HTTPS port', 'Weight', 'Host name', 'Enabled', ''].map((t) => h('th', { scope: 'col', text: t })))),
            tbody)),
          btn('Add server', 'add-server', () => { farm.servers.push({ address: '', httpPort: 80 }); drawServers(); tbody.lastChild.querySelector('input').focus(); })),
        fieldset('Load balancing', 'fs-lb',
          F(['loadBalancing', 'algorithm'], { label: 'Algorithm', kind: 'select', options: ALGOS, def: 'WeightedRoundRobin' }),
          F(['loadBalancing', 'hashServerVariable'], { label: 'Hash server variable (RequestHash)', ph: '(none: hash of {URL})' }),
          F(['loadBalancing', 'queryStringNames'], { label: 'Query string names (RequestHash)', kind: 'list', ph: 'user, session' }),
          F(['loadBalancing', 'leastResponseTimePeriod'], { label: 'Least response time period', kind: 'dur', def: '00:00:05' })),
        fieldset('Server affinity', 'fs-affinity',
          F(['affinity', 'useCookie'], { label: 'Client affinity (cookie)', kind: 'bool', def: false }),
          F(['affinity', 'cookieName'], { label: 'Cookie name', def: 'ARRAffinity' }),
          F(['affinity', 'timeout'], { label: 'Cookie timeout', kind: 'dur', def: '00:20:00' })),
        fieldset('Protocol', 'fs-protocol',
          F(['protocol', 'timeout'], { label: 'Time-out', kind: 'dur', def: '00:00:30' }),
          F(['protocol', 'keepAlive'], { label: 'Keep alive', kind: 'bool', def: true }),
          F(['protocol', 'preserveHostHeader'], { label: 'Preserve client Host header', kind: 'bool', def: true }),
          F(['protocol', 'reverseRewriteHostInResponseHeaders'], { label: 'Reverse rewrite host in response headers', kind: 'bool', def: false }),
          F(['protocol', 'xForwardedForHeaderName'], { label: 'X-Forwarded-For header name', def: 'X-Forwarded-For' }),
          F(['protocol', 'includePortInXForwardedFor'], { label: 'Include TCP port in X-Forwarded-For', kind: 'bool', def: true }),
          F(['protocol', 'arrResponseHeader'], { label: 'Add X-Powered-By: ARR/3.0', kind: 'bool', def: true }),
          h('div', { class: 'field wide' }, hash, h('label', { for: 'cert-pick', text: 'or pick one by name' }), pick),
          F(['protocol', 'clientCertToken'], { label: 'Token holding it (clientCertToken)', ph: '(the only token)' }),
          F(['protocol', 'backendCaFile'], { label: 'Backend CA file', def: '/etc/ssl/certs/ca-certificates.crt' }),
          F(['protocol', 'clientCertHeaderName'], { label: 'Client certificate header', def: 'X-ARR-ClientCert' }),
          F(['protocol', 'sslHeaderName'], { label: 'SSL header', def: 'X-ARR-SSL' }),
          F(['protocol', 'clientCertRfc9440'], { label: 'Also send RFC 9440 Client-Cert', kind: 'bool', def: false })),
        h('fieldset', { 'data-test': 'fs-health', 'data-path': 'healthCheck' }, h('legend', { text: 'Health test' }),
          h('div', { class: 'grid' },
            F(['healthCheck', 'url'], { label: 'URL (off when empty)', ph: 'http://www.example.com/health' }),
            F(['healthCheck', 'interval'], { label: 'Interval', kind: 'dur', def: '00:00:30' }),
            F(['healthCheck', 'timeout'], { label: 'Time-out', kind: 'dur', def: '00:00:30' }),
            F(['healthCheck', 'retries'], { label: 'Acceptable failures (retries)', kind: 'int', def: 3 }),
            F(['healthCheck', 'statusCodeMatch'], { label: 'Acceptable status codes', def: '200-399' }),
            F(['healthCheck', 'responseMatch'], { label: 'Response match', ph: '(none)' }),
            F(['healthCheck', 'liveTrafficFailureCodes'], { label: 'Live traffic: failure codes', def: '500-' }),
            F(['healthCheck', 'maxLiveTrafficFailures'], { label: 'Live traffic: maximum failures', kind: 'int', def: 10 }),
            F(['healthCheck', 'liveTrafficFailurePeriod'], { label: 'Live traffic: failure period (0 = off)', kind: 'dur', def: '00:00:00' }),
            F(['healthCheck', 'minServers'], { label: 'Minimum servers', kind: 'int', def: 0 })),
          h('div', { class: 'bar' }, testNow, h('small', { class: 'muted', text: isNew ? 'Create the farm first.' : 'Probes every server with the saved settings.' })),
          vbox, vres),
        h('div', { class: 'bar sticky' }, saveB, h('a', { class: 'button', href: '#/dashboard', text: 'Cancel' }), delB));
      form.addEventListener('submit', (ev) => {
        ev.preventDefault();
        busy(saveB, async () => {
          try {
            const nm = farm.name;
            if (isNew) await api('POST', '/farms', farm); else await api('PUT', '/farms/' + enc(name), farm);
            box.hidden = true;
            clearErrors(form);
            flash('Farm ' + nm + (isNew ? ' created' : ' saved') + ' and applied.');
            if (isNew || nm !== name) location.hash = '#/farms/' + enc(nm);
          } catch (e) {
            showPathError(form, box, e, (p) => p.replace(/^webFarms\[\d+\]\.?/, ''));
          }
        });
      });
      main.append(form);
    }
  }

  /* ---- rules ---------------------------------------------------------- */
  function pageRules(v) {
    const box = msgBox('rules-error');
    const wrap = h('ol', { class: 'rules', 'data-test': 'rules' });
    let rules = [];
    const saveB = h('button', { type: 'submit', class: 'primary', 'data-test': 'save-rules', text: 'Save and apply rules' });
    const form = h('form', { novalidate: true, 'data-test': 'rules-form' }, wrap,
      h('div', { class: 'bar sticky' }, saveB,
        btn('Add rule', 'add-rule', () => {
          rules.push({ name: 'rule' + (rules.length + 1), patternSyntax: 'Wildcard', match: { url: '*' }, action: { type: 'Rewrite' } });
          draw();
          wrap.lastChild.querySelector('input').focus();
        }),
        btn('Reload', 'reload-rules', () => load())));
    const tUrl = h('input', { id: 'rt-url', name: 'url', type: 'text', placeholder: '/shop/cart?id=1', spellcheck: 'false' });
    const tHost = h('input', { id: 'rt-host', name: 'host', type: 'text', placeholder: 'www.example.com', spellcheck: 'false' });
    const tRes = h('div', { 'data-test': 'rule-test-result', 'aria-live': 'polite' });
    const tB = h('button', { type: 'submit', 'data-test': 'rule-test', text: 'Test' });
    const tester = h('form', { class: 'card', 'data-test': 'rule-tester' },
      h('h2', { text: 'Which rule and farm answer?' }),
      h('p', { class: 'muted small', text: 'Tests the saved rules: save first to test changes.' }),
      h('div', { class: 'grid' }, h('div', { class: 'field' }, h('label', { for: 'rt-url', text: 'URL' }), tUrl),
        h('div', { class: 'field' }, h('label', { for: 'rt-host', text: 'Host' }), tHost)),
      h('div', { class: 'bar' }, tB), tRes);
    tester.addEventListener('submit', (ev) => {
      ev.preventDefault();
      busy(tB, async () => {
        try {
          const r = await api('POST', '/rules/test', { url: tUrl.value.trim(), host: tHost.value.trim() }) || {};
          tRes.replaceChildren(h('dl', { class: 'kv' },
            [['Rule', r.rule || '(none)'], ['Farm', r.farm || '(none)'], ['Outcome', r.outcome], ['URL', r.url]].map(([k, x]) =>
              h('div', { 'data-test': 'rt-' + k.toLowerCase() }, h('dt', { text: k }), h('dd', { text: any(x) })))));
        } catch (e) { tRes.replaceChildren(h('p', { class: 'msg error', text: e.message })); }
      });
    });
    form.hidden = true; /* until the rules are loaded: never save a list that was not read */
    main.append(h('div', { class: 'pagehead' }, h('h1', { text: 'URL rewrite rules' }),
      h('span', { class: 'muted small', text: 'Applied in order, top first.' })), box, form, tester);

    function move(i, d) {
      const j = i + d;
      if (j < 0 || j >= rules.length) return;
      [rules[i], rules[j]] = [rules[j], rules[i]];
      draw();
      const b = wrap.children[j].querySelector(d < 0 ? '[data-test="rule-up"]' : '[data-test="rule-down"]');
      if (b && !b.disabled) b.focus();
    }
    function conds(r) { return Array.isArray(r.conditions) ? r.conditions : (r.conditions && Array.isArray(r.conditions.add) ? r.conditions.add : []); }
    function ruleCard(r, i) {
      const base = 'rules[' + i + ']';
      const F = (path, spec) => field(r, path, Object.assign({ base }, spec));
      const cbody = h('div', { class: 'conds' });
      const drawConds = () => {
        const arr = conds(r);
        const cb = Array.isArray(r.conditions) ? base + '.conditions' : base + '.conditions.add';
        cbody.replaceChildren(...arr.map((c, k) => h('div', { class: 'cond', 'data-path': cb + '[' + k + ']' },
          field(c, ['input'], { base: cb + '[' + k + ']', label: 'Input', ph: '{HTTP_HOST}' }),
          field(c, ['pattern'], { base: cb + '[' + k + ']', label: 'Pattern' }),
          field(c, ['negate'], { base: cb + '[' + k + ']', label: 'Negate', kind: 'bool', def: false }),
          btn('Remove', 'remove-condition', () => {
            arr.splice(k, 1);
            if (!arr.length && Array.isArray(r.conditions)) delete r.conditions;
            drawConds();
          }, 'small danger'))));
      };
      drawConds();
      const grp = h('select', { id: 'g' + (++fid), name: base + '.conditions.logicalGrouping' },
        h('option', { value: 'MatchAll', text: 'Match all' }), h('option', { value: 'MatchAny', text: 'Match any' }));
      grp.value = r.conditions && !Array.isArray(r.conditions) && r.conditions.logicalGrouping === 'MatchAny' ? 'MatchAny' : 'MatchAll';
      grp.addEventListener('change', () => {
        if (Array.isArray(r.conditions) || !r.conditions) r.conditions = { add: conds(r) };
        r.conditions.logicalGrouping = grp.value;
        drawConds();
      });
      const up = btn('Move up', 'rule-up', () => move(i, -1), 'small');
      const down = btn('Move down', 'rule-down', () => move(i, 1), 'small');
      up.disabled = i === 0;
      down.disabled = i === rules.length - 1;
      return h('li', { class: 'card rule', 'data-test': 'rule-' + (r.name || i), 'data-path': base },
        h('div', { class: 'rulehead' }, h('span', { class: 'idx', text: String(i + 1) }),
          F(['name'], { label: 'Name', required: true }), h('div', { class: 'btns' }, up, down,
            btn('Delete', 'rule-delete', () => { rules.splice(i, 1); draw(); }, 'small danger'))),
        h('div', { class: 'grid' },
          F(['enabled'], { label: 'Enabled', kind: 'bool', def: true }),
          F(['stopProcessing'], { label: 'Stop processing of subsequent rules', kind: 'bool', def: false }),
          F(['patternSyntax'], { label: 'Using', kind: 'select', options: ['ECMAScript', 'Wildcard', 'ExactMatch'], def: 'ECMAScript' }),
          F(['match', 'url'], { label: 'Pattern (URL path, no leading /)', required: true }),
          F(['action', 'type'], { label: 'Action', kind: 'select', options: ['Rewrite', 'Redirect', 'CustomResponse', 'AbortRequest', 'None'], def: 'None' }),
          F(['action', 'url'], { label: 'Rewrite / redirect URL', ph: 'http://web/{R:0}' }),
          F(['action', 'redirectType'], { label: 'Redirect type', kind: 'select', options: ['Permanent', 'Found', 'SeeOther', 'Temporary'], def: 'Permanent' })),
        h('fieldset', { class: 'sub' }, h('legend', { text: 'Conditions' }),
          h('div', { class: 'field inline' }, h('label', { for: grp.id, text: 'Logical grouping' }), grp), cbody,
          btn('Add condition', 'add-condition', () => {
            if (!r.conditions) r.conditions = [];
            conds(r).push({ input: '{HTTP_HOST}', pattern: '' });
            drawConds();
          }, 'small')));
    }
    function draw() {
      wrap.replaceChildren(...rules.map(ruleCard));
      if (!rules.length) wrap.append(h('li', { class: 'card muted', text: 'No rule: every request gets 404. Add one.' }));
    }
    async function load() {
      box.hidden = true;
      try {
        const d = await api('GET', '/rules');
        if (!alive(v)) return;
        rules = list(d, 'rules');
        form.hidden = false;
        draw();
      } catch (e) { if (alive(v)) say(box, e); }
    }
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      busy(saveB, async () => {
        try {
          await api('PUT', '/rules', rules);
          box.hidden = true;
          clearErrors(form);
          flash('Rules saved and applied.');
        } catch (e) {
          showPathError(form, box, e, (p) => (p.startsWith('[') ? 'rules' + p : p));
        }
      });
    });
    load();
  }

  /* ---- certificates & tokens ------------------------------------------ */
  function labelled(id, label, input, help) {
    input.id = id;
    return h('div', { class: 'field' }, h('label', { for: id, text: label }), input, help ? h('small', { class: 'help', text: help }) : null);
  }

  function pageCerts(v) {
    const box = msgBox('tokens-error');
    const body = h('div', { 'data-test': 'tokens' }, h('p', { class: 'muted', text: 'Loading tokens…' }));
    main.append(h('div', { class: 'pagehead' }, h('h1', { text: 'Certificates and tokens' }),
      btn('Refresh', 'refresh-tokens', () => load())), box, body);
    let farms = null;
    const farmNames = () => (farms = farms || listFarms());

    async function load() {
      box.hidden = true;
      try {
        const tokens = list(await api('GET', '/tokens'), 'tokens');
        if (!alive(v)) return;
        body.replaceChildren(...(tokens.length ? tokens.map(tokenCard) : [h('p', { class: 'card muted', text: 'No PKCS#11 token is configured (tokens[] in the configuration).' })]));
      } catch (e) {
        if (!alive(v)) return;
        body.replaceChildren();
        say(box, e);
      }
    }

    function tokenCard(t) {
      const tenc = enc(t.name);
      const tb = msgBox('token-error');
      const certs = h('div', { 'data-test': 'certificates' }, h('p', { class: 'muted', text: 'Loading certificates…' }));
      const mech = list(t.mechanisms);
      const card = h('section', { class: 'card token', 'data-test': 'token-' + t.name },
        h('div', { class: 'farmhead' }, h('h2', { text: 'Token ' + t.name }),
          h('span', { class: 'badge ' + (t.loggedIn ? 'ok' : 'warn'), 'data-test': 'logged-in', text: t.loggedIn ? 'Logged in' : 'Not logged in: PIN needed' })),
        h('dl', { class: 'kv' }, [['Label', t.label], ['Serial', t.serial], ['Module', t.module], ['PIN flags', t.pinFlags],
          ['Signatures', t.signatures === undefined ? undefined : num(t.signatures)], ['Average signature time', typeof t.avgSignatureUs === 'number' && t.signatures ? (t.avgSignatureUs / 1000).toFixed(1) + ' ms' : undefined]]
          .map(([k, x]) => h('div', {}, h('dt', { text: k }), h('dd', { text: any(x) })))),
        mech.length ? h('details', {}, h('summary', { text: mech.length + ' mechanisms' }), h('p', { class: 'small mono', text: mech.join(', ') })) : null,
        tb, pinForm(t, tb), h('h3', { text: 'Certificates' }), certs,
        h('div', { class: 'cols' }, csrForm(t), importForm(t)));
      api('GET', '/tokens/' + tenc + '/certificates').then((d) => {
        const cs = list(d, 'certificates');
        certs.replaceChildren(cs.length ? certTable(t, cs) : h('p', { class: 'muted', text: 'No certificate on this token.' }));
      }, (e) => certs.replaceChildren(h('p', { class: 'msg error', text: e.message })));
      return card;
    }

    function pinForm(t, tb) {
      const pin = h('input', { type: 'password', name: 'pin', autocomplete: 'off', 'data-test': 'pin', inputmode: 'numeric' });
      const b = h('button', { type: 'submit', 'data-test': 'pin-submit', text: 'Log in to the token' });
      const f = h('form', { class: 'inline-form', 'data-test': 'pin-form' }, labelled('pin-' + (++fid), 'User PIN', pin,
        'Kept in the data plane\u2019s memory only, never written to disk or kept by this page.'), b);
      f.addEventListener('submit', (ev) => {
        ev.preventDefault();
        const body = { pin: pin.value };
        pin.value = '';
        busy(b, async () => {
          try { await api('POST', '/tokens/' + enc(t.name) + '/pin', body); flash('Token ' + t.name + ': PIN accepted.'); load(); } catch (e) { say(tb, e); }
        });
        body.pin = '';
      });
      return f;
    }

    function thumb(label, value, test) {
      if (!value) return null;
      const code = h('code', { class: 'thumb', 'data-test': test, text: value });
      const b = btn('Copy', 'copy-' + test, () => copy(value, b), 'small');
      b.setAttribute('aria-label', 'Copy ' + label + ' thumbprint');
      return h('div', { class: 'thumbrow' }, h('span', { class: 'muted small', text: label }), code, b);
    }

    function certTable(t, cs) {
      const now = Date.now();
      return h('div', { class: 'tablewrap' }, h('table', { class: 'certs' },
        h('thead', {}, h('tr', {}, ['Certificate', 'Valid until', 'Thumbprints', 'Use'].map((x) => h('th', { scope: 'col', text: x })))),
        h('tbody', {}, cs.map((c) => {
          const exp = Date.parse(c.notAfter);
          const left = isNaN(exp) ? null : (exp - now) / 864e5;
          const sel = h('select', { 'data-test': 'use-farm', 'aria-label': 'Farm to use ' + (c.label || 'this certificate') + ' for' }, h('option', { value: '', text: 'Use for farm…' }));
          const ub = btn('Use', 'use-for-farm', () => busy(ub, () => useFor(t, c, sel.value)), 'small');
          farmNames().then((ns) => sel.append(...ns.map((n) => h('option', { value: n, text: n }))), () => null);
          return h('tr', { 'data-test': 'cert-' + (c.sha256 || c.sha1 || c.label) },
            h('td', { 'data-label': 'Certificate' }, h('div', {}, h('strong', { text: c.label || '(no label)' }),
              h('div', { class: 'small', text: 'Subject: ' + any(c.subject) }), h('div', { class: 'small muted', text: 'Issuer: ' + any(c.issuer) }),
              h('div', { class: 'small muted', text: 'Key: ' + any(c.keyType) }))),
            h('td', { 'data-label': 'Valid until' }, h('div', { title: any(c.notAfter) }, isNaN(exp) ? any(c.notAfter) : new Date(exp).toISOString().slice(0, 10), left === null ? null :
              h('div', {}, h('span', { class: 'badge ' + (left < 0 ? 'bad' : left < 30 ? 'warn' : 'ok'), text: left < 0 ? 'Expired' : left < 30 ? 'Expires in ' + Math.ceil(left) + ' days' : 'Valid' })))),
            h('td', { 'data-label': 'Thumbprints' }, h('div', {}, thumb('SHA-1', c.sha1, 'sha1'), thumb('SHA-256', c.sha256, 'sha256'))),
            h('td', { 'data-label': 'Use' }, h('div', { class: 'btns' }, sel, ub)));
        }))));
    }

    async function useFor(t, c, farm) {
      if (!farm) { say(box, 'Pick the farm first.'); return; }
      try {
        const f = unwrapFarm(await api('GET', '/farms/' + enc(farm)));
        f.protocol = f.protocol || {};
        f.protocol.clientCertHash = c.sha256 || c.sha1;
        const n = list(await api('GET', '/tokens'), 'tokens').length;
        if (n > 1) f.protocol.clientCertToken = t.name;
        await api('PUT', '/farms/' + enc(farm), f);
        box.hidden = true;
        flash('Farm ' + farm + ' now presents ' + (c.label || 'the certificate') + ' (clientCertHash ' + f.protocol.clientCertHash + ').');
      } catch (e) { say(box, e); }
    }

    function csrForm(t) {
      const fb = msgBox('csr-error');
      const type = h('select', { name: 'type' }, ['EC-P256', 'EC-P384', 'RSA-2048', 'RSA-3072'].map((x) => h('option', { value: x, text: x })));
      const label = h('input', { type: 'text', name: 'label', required: true, spellcheck: 'false', placeholder: 'web-client-2026' });
      const subject = h('input', { type: 'text', name: 'subject', spellcheck: 'false', placeholder: 'CN=farmgate.example.com, O=Example' });
      const san = h('input', { type: 'text', name: 'san', spellcheck: 'false', placeholder: 'farmgate.example.com, 10.0.0.5' });
      const existing = h('input', { type: 'checkbox', name: 'existing', id: 'ex' + (++fid) });
      const out = h('div', { 'data-test': 'csr-result' });
      const b = h('button', { type: 'submit', 'data-test': 'csr-submit', text: 'Generate key + CSR' });
      const f = h('form', { class: 'card sub', 'data-test': 'csr-form' }, h('h3', { text: 'Generate key + CSR' }), fb,
        labelled('kt' + fid, 'Key type', type), labelled('kl' + fid, 'Key label', label),
        h('div', { class: 'field check' }, existing, h('label', { for: existing.id, text: 'The key already exists: only make the CSR' })),
        labelled('ks' + fid, 'Subject', subject), labelled('kn' + fid, 'Subject alternative names', san, 'Comma separated DNS names or IP addresses.'),
        h('div', { class: 'bar' }, b), out);
      f.addEventListener('submit', (ev) => {
        ev.preventDefault();
        if (!label.value.trim()) { say(fb, 'Give the key a label.'); label.focus(); return; }
        busy(b, async () => {
          fb.hidden = true;
          const kl = label.value.trim();
          try {
            if (!existing.checked) await api('POST', '/tokens/' + enc(t.name) + '/keys', { type: type.value, label: kl });
            const r = await api('POST', '/tokens/' + enc(t.name) + '/csr',
              { keyLabel: kl, subject: subject.value.trim(), san: san.value.split(/[\s,]+/).filter(Boolean) });
            const pem = (r && r.csr) || '';
            const url = URL.createObjectURL(new Blob([pem], { type: 'application/pkcs10' }));
            const ta = h('textarea', { readonly: true, rows: '6', class: 'mono', 'aria-label': 'CSR (PEM)' });
            ta.value = pem;
            out.replaceChildren(h('p', {}, h('a', { class: 'button primary', href: url, download: kl + '.csr', 'data-test': 'csr-download', text: 'Download ' + kl + '.csr' })), ta);
          } catch (e) { say(fb, e); }
        });
      });
      return f;
    }

    function importForm(t) {
      const fb = msgBox('import-error');
      const pem = h('textarea', { name: 'pem', rows: '5', class: 'mono', spellcheck: 'false', placeholder: '-----BEGIN CERTIFICATE-----' });
      const pemFile = h('input', { type: 'file', accept: '.pem,.crt,.cer' });
      pemFile.addEventListener('change', async () => { if (pemFile.files[0]) pem.value = await readFile(pemFile.files[0]); });
      const b1 = h('button', { type: 'submit', 'data-test': 'import-cert', text: 'Import certificate' });
      const f1 = h('form', { 'data-test': 'import-cert-form' }, labelled('pf' + (++fid), 'Certificate file (PEM)', pemFile),
        labelled('pt' + fid, 'or paste the PEM', pem), h('div', { class: 'bar' }, b1));
      f1.addEventListener('submit', (ev) => {
        ev.preventDefault();
        busy(b1, async () => {
          try {
            await api('POST', '/tokens/' + enc(t.name) + '/certificates', { pem: pem.value });
            pem.value = '';
            flash('Certificate imported onto ' + t.name + '.');
            load();
          } catch (e) { say(fb, e); }
        });
      });
      const pfx = h('input', { type: 'file', accept: '.pfx,.p12', required: true });
      const pw = h('input', { type: 'password', autocomplete: 'off' });
      const b2 = h('button', { type: 'submit', 'data-test': 'import-pfx', text: 'Import PFX' });
      const f2 = h('form', { 'data-test': 'import-pfx-form' }, labelled('xf' + fid, 'PFX / PKCS#12 file', pfx),
        labelled('xp' + fid, 'PFX password', pw), h('div', { class: 'bar' }, b2));
      f2.addEventListener('submit', (ev) => {
        ev.preventDefault();
        if (!pfx.files[0]) { say(fb, 'Choose the PFX file.'); return; }
        const password = pw.value;
        pw.value = '';
        busy(b2, async () => {
          try {
            const pfxBase64 = b64(await readFile(pfx.files[0], true));
            await api('POST', '/tokens/' + enc(t.name) + '/pfx', { pfxBase64, password });
            pfx.value = '';
            flash('PFX imported onto ' + t.name + ': its key stays on the token.');
            load();
          } catch (e) { say(fb, e); }
        });
      });
      return h('div', { class: 'card sub' }, h('h3', { text: 'Import' }), fb, f1, h('hr'), f2);
    }
    load();
  }

  /* ---- system --------------------------------------------------------- */
  function pageSystem(v) {
    const sec = (title, test, ...kids) => h('section', { class: 'card', 'data-test': test }, h('h2', { text: title }), kids);
    const vers = h('dl', { class: 'kv' }, h('div', {}, h('dt', { text: 'Version' }), h('dd', { text: 'Loading…' })));
    const vbox = msgBox();
    api('GET', '/system').then((d) => {
      d = d || {};
      vers.replaceChildren(...[['Version', d.version], ['Uptime', uptime(d.uptimeS)], ['Build options', d.buildOptions]]
        .map(([k, x]) => h('div', { 'data-test': 'sys-' + k.split(' ')[0].toLowerCase() }, h('dt', { text: k }), h('dd', { class: k === 'Build options' ? 'small mono' : '', text: any(x) }))));
      /* reboot and factory reset: only where the appliance has them */
      if (alive(v)) for (const a of ['reboot', 'factory-reset']) if (list(d, 'actions').includes(a)) cols.append(actionCard(a));
    }, (e) => { vers.replaceChildren(); say(vbox, e); });

    function actionCard(action) {
      const reset = action === 'factory-reset';
      const box = msgBox(action + '-error');
      const pw = h('input', { type: 'password', autocomplete: 'current-password', required: true });
      const conf = h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false', required: true });
      const b = h('button', { type: 'submit', class: 'danger', 'data-test': action + '-submit', text: reset ? 'Erase everything and restart' : 'Reboot' });
      const f = h('form', { 'data-test': action + '-form' }, box, userField(),
        h('p', { class: reset ? 'msg error' : 'muted small', text: reset
          ? 'Erases the configuration, the tokens, the keys and certificates, the administrator password and the logs on the appliance, then restarts it with its factory settings. This cannot be undone: download a backup first.'
          : 'Restarts the appliance: the proxy does not serve until it is back.' }),
        labelled(reset ? 'reset-password' : 'reboot-password', 'Administrator password', pw),
        reset ? labelled('reset-confirm', 'Type factory-reset to confirm', conf) : null,
        h('div', { class: 'bar' }, b));
      f.addEventListener('submit', (ev) => {
        ev.preventDefault();
        box.hidden = true;
        if (reset && conf.value.trim() !== 'factory-reset') { say(box, 'Type factory-reset to confirm.'); conf.focus(); return; }
        const body = reset ? { password: pw.value, confirm: 'factory-reset' } : { password: pw.value };
        pw.value = '';
        busy(b, async () => {
          try {
            await api('POST', '/system/' + action, body);
            pageRestarting(reset);
          } catch (e) { say(box, e); }
        });
      });
      return sec(reset ? 'Factory reset' : 'Reboot', action, f);
    }

    /* password */
    const pb = msgBox('password-error');
    const cur = h('input', { type: 'password', autocomplete: 'current-password', required: true });
    const n1 = h('input', { type: 'password', autocomplete: 'new-password', required: true });
    const n2 = h('input', { type: 'password', autocomplete: 'new-password', required: true });
    const pB = h('button', { type: 'submit', 'data-test': 'change-password', text: 'Change password' });
    const pf = h('form', { 'data-test': 'password-form' }, pb, userField(), labelled('cur-password', 'Current password', cur),
      labelled('chg-password', 'New password', n1), labelled('chg-password2', 'New password again', n2), h('div', { class: 'bar' }, pB));
    pf.addEventListener('submit', (ev) => {
      ev.preventDefault();
      if (!n1.value || n1.value !== n2.value) { say(pb, n1.value ? 'The two new passwords differ.' : 'Choose a new password.'); return; }
      const body = { current: cur.value, password: n1.value };
      cur.value = n1.value = n2.value = '';
      busy(pB, async () => {
        try {
          await api('POST', '/auth/password', body);
          S.csrf = null;
          S.state = { passwordSet: true, loggedIn: false };
          flash('Password changed: every session was closed. Sign in with the new password.');
          location.hash = '#/login';
        } catch (e) { say(pb, e.status === 401 || e.status === 403 ? 'The current password is wrong (' + e.message + ')' : e); }
      });
    });

    /* backup / restore */
    const bb = msgBox('backup-error');
    const dl = btn('Download backup', 'backup', () => busy(dl, async () => {
      try {
        const text = await api('GET', '/backup', undefined, { text: true });
        download(text, 'farmgate-backup-' + new Date().toISOString().slice(0, 10) + '.json', 'application/json');
        bb.hidden = true;
      } catch (e) { say(bb, e); }
    }), 'primary');
    const file = h('input', { type: 'file', accept: '.json,application/json', 'data-test': 'restore-file' });
    const rB = btn('Restore…', 'restore', async () => {
      bb.hidden = true;
      if (!file.files[0]) { say(bb, 'Choose a backup file first.'); return; }
      let cfg;
      try { cfg = JSON.parse(await readFile(file.files[0])); } catch (e) { say(bb, 'Not a JSON backup: ' + e.message); return; }
      const yes = btn('Replace the configuration', 'confirm-restore', () => busy(yes, async () => {
        try {
          await api('POST', '/restore', cfg);
          conf.remove();
          rB.hidden = false;
          file.value = '';
          say(bb, 'Configuration restored and applied.', 'ok');
        } catch (e) { say(bb, e); }
      }), 'danger');
      const no = btn('Cancel', 'cancel-restore', () => { conf.remove(); rB.hidden = false; });
      const conf = h('span', { class: 'confirm' }, 'Replace the whole configuration with ' + file.files[0].name + '? ', yes, no);
      rB.hidden = true;
      rB.after(conf);
      no.focus();
    });

    /* logs, audit */
    const logs = h('pre', { class: 'logs', 'data-test': 'logs', tabindex: '0' });
    const loadLogs = () => api('GET', '/logs').then((d) => {
      const ls = list(d, 'lines');
      logs.textContent = ls.length ? ls.join('\n') : '(no log line)';
      logs.scrollTop = logs.scrollHeight;
    }, (e) => { logs.textContent = e.message; });
    const audit = h('div', { 'data-test': 'audit' });
    const loadAudit = () => api('GET', '/audit').then((d) => {
      const es = list(d, 'entries');
      audit.replaceChildren(es.length ? h('div', { class: 'tablewrap' }, h('table', { class: 'mini' },
        h('thead', {}, h('tr', {}, ['Time', 'User', 'Action', 'Detail'].map((t) => h('th', { scope: 'col', text: t })))),
        h('tbody', {}, es.slice().reverse().map((x) => h('tr', {}, [['Time', x.time], ['From', x.user || x.ip], ['Action', x.action], ['Detail', x.detail]]
          .map(([k, y]) => h('td', { 'data-label': k, text: any(y) }))))))) : h('p', { class: 'muted', text: 'Nothing recorded yet.' }));
    }, (e) => audit.replaceChildren(h('p', { class: 'msg error', text: e.message })));
    loadLogs();
    loadAudit();

    const cols = h('div', { class: 'cols' },
      sec('Version', 'version', vbox, vers),
      sec('Administrator password', 'password', pf),
      sec('Backup and restore', 'backup-restore', h('p', { class: 'muted small', text: 'The configuration without secrets (PINs, PFX passwords stay out).' }),
        bb, h('div', { class: 'bar' }, dl), labelled('restore-file', 'Backup to restore', file), h('div', { class: 'bar' }, rB)));
    main.append(h('div', { class: 'pagehead' }, h('h1', { text: 'System' })), cols,
      sec('Recent log', 'logs-section', h('div', { class: 'bar' }, btn('Refresh', 'refresh-logs', loadLogs, 'small')), logs),
      sec('Audit log', 'audit-section', h('div', { class: 'bar' }, btn('Refresh', 'refresh-audit', loadAudit, 'small')), audit));
  }

  /* After a reboot or factory reset was accepted: GET /auth/state every 2 s until the
   * appliance answers as a restarted one (it stopped answering, or the session is gone),
   * then the page loads again (sign-in, or setup after a factory reset). */
  function pageRestarting(reset) {
    const v = ++S.view;
    clearTimeout(S.timer);
    const t0 = Date.now();
    let down = false;
    const wait = h('p', { class: 'muted', 'data-test': 'restart-wait', role: 'status', 'aria-live': 'polite', text: 'Waiting for the appliance to answer again…' });
    main.replaceChildren(h('section', { class: 'card auth', 'data-test': 'restarting' },
      h('h1', { 'data-test': 'system-action-status', text: 'Rebooting…' }),
      h('p', { text: reset ? 'The appliance is erasing its data and restarting with its factory settings.' : 'The appliance is restarting.' }),
      reset ? h('p', { class: 'msg info', 'data-test': 'setup-code-needed', text: 'It has no administrator password afterwards: the setup code shown on its console is needed again to set one. It also makes a new certificate, so the browser may warn about it once: if this page waits for long, reload it.' }) : null,
      wait));
    document.title = 'Rebooting… · Farmgate';
    /* the session does not outlive the restart: nothing to navigate to meanwhile */
    document.getElementById('nav').hidden = document.getElementById('logout').hidden = true;
    async function poll() {
      let st = null;
      const ctl = new AbortController();
      const to = setTimeout(() => ctl.abort(), 1800);
      try {
        const r = await fetch('/api/v1/auth/state', { credentials: 'same-origin', cache: 'no-store', signal: ctl.signal });
        st = r.ok ? await r.json() : null;
      } catch (e) { st = null; }
      clearTimeout(to);
      if (!alive(v)) return;
      if (st && (down || !st.loggedIn)) { location.reload(); return; }
      if (!st) down = true;
      const min = Math.floor((Date.now() - t0) / 60000);
      if (!st && min >= 1) wait.textContent = 'Not answering yet (' + min + ' min): still waiting…';
      if (st && min >= 2) wait.textContent = 'The appliance is still running as before (' + min + ' min): the restart has not begun. Its log may say why.';
      S.timer = setTimeout(poll, 2000);
    }
    S.timer = setTimeout(poll, 2000);
  }

  /* ---- router --------------------------------------------------------- */
  async function route() {
    const v = ++S.view;
    clearTimeout(S.timer);
    const parts = location.hash.replace(/^#\/?/, '').split('/');
    const page = parts[0] || 'dashboard';
    let arg = parts.slice(1).join('/');
    try { arg = decodeURIComponent(arg); } catch (e) { /* keep it raw */ }
    if (!S.state) {
      try { await authState(); } catch (e) {
        if (!alive(v)) return;
        main.replaceChildren(h('section', { class: 'card auth' }, h('h1', { text: 'Farmgate' }),
          h('p', { class: 'msg error', text: 'The management service did not answer: ' + e.message }),
          btn('Try again', 'retry', () => route(), 'primary')));
        return;
      }
      if (!alive(v)) return;
    }
    const st = S.state;
    const authPage = page === 'login' || page === 'setup';
    if (!st.passwordSet && page !== 'setup') { location.replace('#/setup'); return; }
    if (st.passwordSet && !st.loggedIn && page !== 'login') {
      if (!authPage) S.next = location.hash;
      location.replace('#/login');
      return;
    }
    if (st.loggedIn && authPage) { location.replace('#/dashboard'); return; }

    document.getElementById('nav').hidden = document.getElementById('logout').hidden = !st.loggedIn;
    const navKey = page === 'farms' || page === 'add-farm' ? 'dashboard' : page;
    for (const a of document.querySelectorAll('#nav a')) {
      if (a.getAttribute('data-route') === navKey) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    }
    main.replaceChildren();
    const titles = { dashboard: 'Dashboard', farms: 'Farm ' + arg, 'add-farm': 'Add farm', rules: 'Rules', certificates: 'Certificates', system: 'System', login: 'Sign in', setup: 'First-time setup' };
    document.title = (titles[page] || 'Not found') + ' · Farmgate';
    switch (page) {
      case 'login': pageLogin(); break;
      case 'setup': pageSetup(); break;
      case 'dashboard': pageDashboard(v); break;
      case 'farms': if (arg) pageFarm(v, arg); else { location.replace('#/dashboard'); return; } break;
      case 'add-farm': pageFarm(v, null); break;
      case 'rules': pageRules(v); break;
      case 'certificates': pageCerts(v); break;
      case 'system': pageSystem(v); break;
      default:
        main.append(h('section', { class: 'card' }, h('h1', { text: 'Page not found' }),
          h('p', {}, 'Nothing here. ', h('a', { href: '#/dashboard', text: 'Go to the dashboard' }), '.')));
    }
    if (S.routed && !authPage) main.focus({ preventScroll: true });
    S.routed = true;
  }
  window.addEventListener('hashchange', route);
  route();
})();
