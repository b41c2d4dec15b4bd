#!/usr/bin/env node
/* Farmgate web UI end to end in Debian's Chromium, driven by npm playwright-core (issue 6,
 * "Browser tests"). Run by tests/integration/test_browser.py; usable by hand too.
 *
 *   node tests/browser/ui_flow.js '<json args>'      (or the JSON in $UI_FLOW_ARGS)
 *
 * args (JSON object):
 *   baseUrl        "https://127.0.0.1:<port>" of farmgate-mgmt
 *   certPem        its certificate (<datadir>/mgmt-cert.pem): Chromium trusts exactly that
 *                  key (--ignore-certificate-errors-spki-list), no blanket ignoreHTTPSErrors
 *   setupCode      <datadir>/setup-code
 *   password       the administrator password to set
 *   screenshotDir  where <page>-wide.png (1280x800) and <page>-phone.png (375x800) go
 *   playwright     path of the playwright-core package (default: build/node/node_modules/...)
 *   chromium       the browser (default /usr/bin/chromium)
 *   web            {name, host, servers: [{address, httpPort}], healthUrl}: the farm created
 *                  in the farm editor, reached through a rule made on the rules page
 *   secure         {name, token, sha1, sha256}: a farm already in the configuration (HTTPS
 *                  backend wanting a client certificate) and the certificate on the token
 *                  to give it by thumbprint ("Use for farm" on the certificates page)
 *   xss            text used as a farm name and a rule name: must show as text
 *   allow404       API paths (e.g. "/api/v1/logs") whose 404 is tolerated as a known gap and
 *                  listed in the result's knownGaps instead of failing as a console error
 *   systemActions  true when farmgate-mgmt runs with -x: after the rest, reboot then factory
 *                  reset from the System page, each followed by the ask "rebooted" / "reset"
 *                  (the test checks its helper ran, restarts farmgate-mgmt, after a reset
 *                  without its password) and the page's own return to sign-in / setup;
 *                  false: the System page must not offer them
 *   timeoutMs      overall limit (default 80000)
 *
 * The test and this script talk over stdout / stdin, one JSON object per line: at a sync
 * point the script writes {"ask": "<what>", ...} and waits for one line back, {"ok": true,
 * ...} to go on or {"ok": false, "error": "..."} to fail. Asks: farm-created, rules-saved,
 * cert-used, backend-stop, backend-start, drained, available (then rebooted, reset with
 * systemActions). The last stdout line is
 * {"result": "pass", ...} (exit 0) or {"result": "fail", "error": ..., "step": ...} (exit 1).
 * Progress goes to stderr.
 *
 * Checked throughout: no JavaScript dialog ever opens, no uncaught page error, no console
 * error or warning (a failed fetch the flow provokes on purpose, e.g. the wrong setup code,
 * is announced beforehand with expect()), no Content-Security-Policy violation, no
 * <img src=x> in the DOM.
 */
'use strict';

const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const readline = require('readline');

const REPO = path.resolve(__dirname, '..', '..');
const A = JSON.parse(process.argv[2] || process.env.UI_FLOW_ARGS || '{}');
const T0 = Date.now();
const TIMEOUT = A.timeoutMs || 80000;
const WIDE = { width: 1280, height: 800 };
const PHONE = { width: 375, height: 800 };

let step = 'start';
let curPage = null;
const steps = [];
const shots = [];
const dialogs = [];
const pageErrors = [];
const consoleProblems = [];
const allowedHttp = []; /* [{status, re, used}] failed fetches announced by the flow */
const knownGaps = [];   /* allowed 404s of routes the UI calls but the API lacks (args.allow404) */
let restarting = false; /* farmgate-mgmt is being restarted: its polls may fail to connect */

function log(...m) {
  process.stderr.write('[ui_flow ' + ((Date.now() - T0) / 1000).toFixed(1) + 's] ' + m.join(' ') + '\n');
}
function out(obj) { process.stdout.write(JSON.stringify(obj) + '\n'); }
function fail(msg) { throw new Error(msg); }
function at(name) { step = name; steps.push({ step: name, t: +((Date.now() - T0) / 1000).toFixed(2) }); log('step:', name); }

/* ---- the line protocol with the test ------------------------------------------------ */
const rl = readline.createInterface({ input: process.stdin });
const replies = [];
let waiter = null;
rl.on('line', (line) => {
  if (!line.trim()) return;
  let v;
  try { v = JSON.parse(line); } catch (e) { v = { ok: false, error: 'the test sent a line that is not JSON: ' + line }; }
  if (waiter) { const w = waiter; waiter = null; w(v); } else replies.push(v);
});
rl.on('close', () => { if (waiter) { const w = waiter; waiter = null; w({ ok: false, error: 'stdin closed: no test is answering' }); } });

async function ask(what, data) {
  out(Object.assign({ ask: what }, data || {}));
  const v = replies.length ? replies.shift() : await new Promise((res) => { waiter = res; });
  if (!v || v.ok !== true) fail('the test refused at "' + what + '": ' + ((v && v.error) || JSON.stringify(v)));
  log('ask', what, 'ok');
  return v;
}

/* ---- helpers ------------------------------------------------------------------------- */
function spkiHash(pemFile) {
  const pem = fs.readFileSync(pemFile, 'utf8');
  const der = new crypto.X509Certificate(pem).publicKey.export({ type: 'spki', format: 'der' });
  return crypto.createHash('sha256').update(der).digest('base64');
}

/* one selector for [data-test="<v>"], quoting as CSS needs */
const dt = (v) => '[data-test="' + String(v).replace(/\\/g, '\\\\').replace(/"/g, '\\"') + '"]';
const byName = (n) => '[name="' + n.replace(/"/g, '\\"') + '"]';
const hex = (s) => String(s || '').replace(/[^0-9a-f]/gi, '').toUpperCase();

async function main() {
  const { chromium } = require(A.playwright || path.join(REPO, 'build/node/node_modules/playwright-core'));
  const base = A.baseUrl.replace(/\/$/, '');
  const args = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-dev-shm-usage'];
  if (A.certPem) args.push('--ignore-certificate-errors-spki-list=' + spkiHash(A.certPem));
  at('launch');
  const browser = await chromium.launch({ executablePath: A.chromium || '/usr/bin/chromium', args, timeout: 20000 });
  try {
    await flow(browser, base);
  } catch (e) {
    if (curPage && A.screenshotDir) { /* the state it failed in */
      const file = path.join(A.screenshotDir, 'FAILED-' + step.replace(/[^\w.-]/g, '_') + '.png');
      await curPage.screenshot({ path: file, fullPage: true }).then(() => shots.push(file), () => null);
    }
    throw e;
  } finally {
    await browser.close().catch(() => null);
  }
}

async function flow(browser, base) {
  const ctx = await browser.newContext({
    viewport: WIDE, ignoreHTTPSErrors: !A.certPem, locale: 'en-US', timezoneId: 'UTC',
    serviceWorkers: 'block',
  });
  await ctx.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
  /* CSP violations as the page sees them (the report also reaches the console) */
  await ctx.addInitScript(() => {
    window.__csp = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__csp.push(e.violatedDirective + ' ' + (e.blockedURI || '') + ' ' + (e.sourceFile || '') + ':' + (e.lineNumber || ''));
    });
  });
  const page = curPage = await ctx.newPage();
  page.setDefaultTimeout(10000);
  page.on('dialog', (d) => { dialogs.push(d.type() + ': ' + d.message()); log('DIALOG', d.message()); d.dismiss().catch(() => null); });
  page.on('pageerror', (e) => { pageErrors.push(String(e && e.stack || e)); log('PAGEERROR', e); });
  page.on('console', (m) => {
    const type = m.type();
    if (type !== 'error' && type !== 'warning') return;
    const text = m.text();
    const url = (m.location() && m.location().url) || '';
    if (restarting && /\/api\/v1\/auth\/state$/.test(url) && /net::ERR_/.test(text)) return;
    const sm = /status of (\d{3})/.exec(text);
    if (sm) {
      const status = +sm[1];
      const ok = allowedHttp.find((x) => x.status === status && x.re.test(url));
      if (ok) { ok.used++; return; }
      const gap = (A.allow404 || []).find((p) => status === 404 && url.endsWith(p));
      if (gap) { if (!knownGaps.includes(gap)) knownGaps.push(gap); return; }
    }
    consoleProblems.push('[' + step + '] console.' + type + ': ' + text + (url ? ' (' + url + ')' : ''));
    log('CONSOLE', type, text, url);
  });
  /* a failed API call the flow provokes on purpose */
  const expect = (status, re) => { const x = { status, re, used: 0 }; allowedHttp.push(x); return x; };

  const banner = page.locator('#banner');
  async function waitBanner(re, what) {
    await page.waitForFunction((src) => {
      const b = document.getElementById('banner');
      return b && !b.hidden && new RegExp(src).test(b.textContent);
    }, re.source, { timeout: 10000 }).catch(async () => {
      fail(what + ': the banner never said ' + re + ' (it says "' + (await banner.textContent().catch(() => '?')) + '", hidden=' +
        (await banner.isHidden().catch(() => '?')) + ')');
    });
  }
  async function hashIs(h, what) {
    await page.waitForFunction((x) => location.hash === x, h, { timeout: 10000 })
      .catch(() => fail(what + ': expected location ' + h + ', still at ' + page.url()));
  }
  async function noInjectedImg(where) {
    const n = await page.locator('img[src="x"]').count();
    if (n) fail(where + ': an <img src=x> made it into the DOM (' + n + ')');
  }
  async function shot(name) {
    for (const [label, vp] of [['wide', WIDE], ['phone', PHONE]]) {
      await page.setViewportSize(vp);
      await page.waitForTimeout(150); /* layout after the resize */
      const file = path.join(A.screenshotDir, name + '-' + label + '.png');
      await page.screenshot({ path: file, fullPage: true });
      shots.push(file);
      if (label === 'phone') {
        /* usable on a phone: no horizontal scrolling of the page itself */
        const over = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
        if (over > 2) fail(name + ': at 375 px the page is ' + over + ' px wider than the screen');
      }
    }
    await page.setViewportSize(WIDE);
  }
  async function nav(test, hash) {
    await page.click(dt(test));
    await hashIs(hash, 'navigation ' + test);
  }

  /* ---- first-time setup ---------------------------------------------------------------- */
  at('setup');
  await page.goto(base + '/', { waitUntil: 'load' });
  await hashIs('#/setup', 'no password yet: every route goes to the setup');
  await page.waitForSelector('#setup-code');
  if (!(await page.locator('#nav').isHidden())) fail('setup: the navigation shows before sign-in');
  await shot('setup');
  /* the two passwords differ: refused by the page itself, nothing sent */
  await page.fill('#setup-code', A.setupCode);
  await page.fill('#new-password', A.password);
  await page.fill('#new-password2', A.password + 'x');
  await page.click('#setup');
  await page.waitForSelector(dt('setup-error') + ':visible');
  if (!/differ/.test(await page.textContent(dt('setup-error')))) fail('setup: no "passwords differ" message');
  /* a wrong setup code: the API refuses it, the page says so */
  const wrongCode = expect(403, /\/api\/v1\/auth\/setup$/);
  expect(401, /\/api\/v1\/auth\/setup$/);
  await page.fill('#setup-code', 'wrong-' + A.setupCode);
  await page.fill('#new-password', A.password);
  await page.fill('#new-password2', A.password);
  await page.click('#setup');
  await page.waitForFunction(() => /setup code/i.test((document.querySelector('[data-test="setup-error"]') || {}).textContent || ''))
    .catch(() => fail('setup: a wrong setup code did not show "Wrong setup code"'));
  if ((await page.evaluate(() => location.hash)) !== '#/setup') fail('setup: a wrong code led on to ' + page.url());
  if (!wrongCode.used) log('note: no console message for the refused setup code');
  await page.fill('#setup-code', A.setupCode);
  await page.fill('#new-password', A.password);
  await page.fill('#new-password2', A.password);
  await page.click('#setup');
  await page.waitForFunction(() => location.hash === '#/dashboard' || location.hash === '#/login', null, { timeout: 15000 })
    .catch(() => fail('setup: the right code did not lead on (still ' + page.url() + ')'));
  const afterSetup = await page.evaluate(() => location.hash);
  if (await page.evaluate(() => (document.getElementById('new-password') || {}).value)) fail('setup: the password field kept its value');

  /* ---- sign out, sign in ----------------------------------------------------------------- */
  at('login');
  if (afterSetup === '#/dashboard') {
    await page.waitForSelector(dt('logout') + ':visible');
    await page.click(dt('logout'));
  }
  await hashIs('#/login', 'sign out');
  await page.waitForSelector('#password');
  await shot('login');
  expect(401, /\/api\/v1\/auth\/login$/);
  await page.fill('#password', A.password + '-wrong');
  await page.click('#login');
  await page.waitForFunction(() => /Wrong password/.test((document.querySelector('[data-test="login-error"]') || {}).textContent || ''))
    .catch(() => fail('login: a wrong password did not say "Wrong password."'));
  if ((await page.inputValue('#password')) !== '') fail('login: the password field kept the wrong password');
  await page.fill('#password', A.password);
  await page.click('#login');
  await hashIs('#/dashboard', 'login');
  await page.waitForSelector('#nav:visible');
  const cookies = await ctx.cookies(base);
  const sid = cookies.find((c) => c.name === '__Host-fgsid');
  if (!sid) fail('login: no __Host-fgsid cookie (cookies: ' + cookies.map((c) => c.name).join(', ') + ')');
  if (!sid.secure || !sid.httpOnly || sid.sameSite !== 'Strict' || sid.path !== '/')
    fail('login: the session cookie lacks Secure/HttpOnly/SameSite=Strict/Path=/: ' + JSON.stringify(sid));
  if (await page.evaluate(() => document.cookie.includes('fgsid'))) fail('login: the session cookie is readable by script');
  const stored = await page.evaluate(() => localStorage.length + sessionStorage.length);
  if (stored) fail('login: the page put ' + stored + ' item(s) into localStorage/sessionStorage');

  /* ---- a farm with two servers in the farm editor ------------------------------------ */
  at('add-farm');
  await page.waitForSelector(dt('farm-' + A.secure.name)); /* the farm the configuration had */
  await page.click(dt('add-farm'));
  await hashIs('#/add-farm', 'add farm');
  await page.waitForSelector(dt('farm-form'));
  const W = A.web;
  await page.fill(byName('name'), W.name);
  await page.fill(byName('servers[0].address'), W.servers[0].address);
  await page.fill(byName('servers[0].httpPort'), String(W.servers[0].httpPort));
  await page.click(dt('add-server'));
  await page.waitForSelector(byName('servers[1].address'));
  const focused = await page.evaluate(() => document.activeElement && document.activeElement.name);
  if (focused !== 'servers[1].address') fail('add server: focus went to ' + focused + ', not the new address');
  await page.fill(byName('servers[1].address'), W.servers[1].address);
  await page.fill(byName('servers[1].httpPort'), String(W.servers[1].httpPort));
  await page.fill(byName('healthCheck.url'), W.healthUrl);
  await page.fill(byName('healthCheck.interval'), '00:00:01');
  await page.fill(byName('healthCheck.timeout'), '00:00:02');
  await page.fill(byName('healthCheck.retries'), '1');
  await page.click(dt('save'));
  await waitBanner(/created and applied/, 'create farm');
  await hashIs('#/farms/' + encodeURIComponent(W.name), 'create farm');
  await ask('farm-created', { farm: W.name });

  /* the editor of the new farm: Test now probes both servers */
  at('farm-editor');
  await page.waitForSelector(byName('servers[1].address'));
  if ((await page.inputValue(byName('servers[1].httpPort'))) !== String(W.servers[1].httpPort)) fail('farm editor: the second server did not come back');
  await page.click(dt('test-now'));
  await page.waitForSelector(dt('verify-results') + ':visible');
  for (const s of W.servers) {
    const r = page.locator(dt('verify-results') + ' ' + dt('verify-' + s.address + ':' + s.httpPort) + ' ' + dt('result'));
    const txt = (await r.textContent().catch(() => null));
    if (txt !== 'Success') fail('farm editor: Test now gave ' + txt + ' for ' + s.address + ':' + s.httpPort);
  }
  await shot('farm-editor');

  /* ---- rules: the farm's rule, and one whose name is markup ----------------------------- */
  at('rules');
  await nav('nav-rules', '#/rules');
  await page.waitForSelector(dt('rules-form') + ':visible');
  const n0 = await page.locator(dt('rules') + ' > li.rule').count();
  await page.click(dt('add-rule'));
  const r1 = 'rules[' + n0 + ']';
  await page.fill(byName(r1 + '.name'), 'ARR_' + W.name + '_loadbalance');
  await page.check(byName(r1 + '.stopProcessing'));
  await page.fill(byName(r1 + '.action.url'), 'http://' + W.name + '/{R:0}');
  await page.locator(dt('rules') + ' > li.rule').nth(n0).locator(dt('add-condition')).click();
  await page.fill(byName(r1 + '.conditions[0].pattern'), W.host);
  await page.click(dt('add-rule'));
  const r2 = 'rules[' + (n0 + 1) + ']';
  await page.fill(byName(r2 + '.name'), A.xss);
  await page.selectOption(byName(r2 + '.action.type'), 'AbortRequest');
  await page.locator(dt('rules') + ' > li.rule').nth(n0 + 1).locator(dt('add-condition')).click();
  await page.fill(byName(r2 + '.conditions[0].pattern'), 'xss.example.com');
  await page.click(dt('save-rules'));
  await waitBanner(/Rules saved and applied/, 'save rules');
  await ask('rules-saved', { rules: n0 + 2 });
  /* the rules as read back: the markup name is an input value and an attribute, never markup */
  await page.click(dt('reload-rules'));
  await page.waitForSelector(dt('rule-' + A.xss));
  if ((await page.inputValue(byName(r2 + '.name'))) !== A.xss) fail('rules: the markup rule name did not come back as typed');
  /* the tester: which rule and farm answer */
  await page.fill('#rt-url', '/shop/cart?id=1');
  await page.fill('#rt-host', W.host);
  await page.click(dt('rule-test'));
  await page.waitForSelector(dt('rt-farm'));
  const rtFarm = await page.textContent(dt('rt-farm') + ' dd');
  const rtRule = await page.textContent(dt('rt-rule') + ' dd');
  if (rtFarm !== W.name || rtRule !== 'ARR_' + W.name + '_loadbalance') fail('rule tester: got rule ' + rtRule + ', farm ' + rtFarm);
  await page.fill('#rt-host', 'xss.example.com');
  await page.click(dt('rule-test'));
  await page.waitForFunction((x) => {
    const d = document.querySelector('[data-test="rt-rule"] dd');
    return d && d.textContent === x;
  }, A.xss).catch(async () => fail('rule tester: the markup rule name is not shown as text (shows "' +
    await page.textContent(dt('rt-rule') + ' dd').catch(() => '?') + '")'));
  await page.waitForTimeout(300); /* an injected onerror would have fired by now */
  await noInjectedImg('rules');
  await shot('rules');

  /* ---- a farm name that is markup: refused with the field named, shown as text -------- */
  at('xss-farm');
  await page.goto(base + '/#/add-farm');
  await page.waitForSelector(dt('farm-form'));
  const bad = expect(400, /\/api\/v1\/farms$/);
  await page.fill(byName('name'), A.xss);
  await page.fill(byName('servers[0].address'), '127.0.0.1');
  await page.click(dt('save'));
  await page.waitForSelector(dt('form-error') + ':visible');
  const fe = await page.textContent(dt('form-error'));
  if (!/webFarms\[\d+\]\.name/.test(fe)) fail('markup farm name: the error does not name the field: ' + fe);
  if ((await page.getAttribute(byName('name'), 'aria-invalid')) !== 'true') fail('markup farm name: the name field is not marked invalid');
  if (!bad.used) log('note: no console message for the 400 (fine)');
  await page.waitForTimeout(300);
  await noInjectedImg('markup farm name');

  /* ---- certificates: the client certificate by thumbprint for the HTTPS farm ---------- */
  at('certificates');
  await page.goto(base + '/#/dashboard');
  await nav('nav-certificates', '#/certificates');
  const S = A.secure;
  const tok = dt('token-' + S.token);
  await page.waitForSelector(tok).catch(async () => fail('certificates: no card for token ' + S.token + ' (GET /api/v1/tokens); the page says: "' +
    ((await page.textContent('main').catch(() => '?')) || '').replace(/\s+/g, ' ').slice(0, 300) + '"'));
  const li = (await page.textContent(tok + ' ' + dt('logged-in'))).trim();
  if (li !== 'Logged in') fail('certificates: token ' + S.token + ' says "' + li + '"');
  const row = tok + ' ' + dt('cert-' + S.sha256) + ', ' + tok + ' ' + dt('cert-' + S.sha256.toLowerCase());
  await page.waitForSelector(row).catch(async () => fail('certificates: no row for SHA-256 ' + S.sha256 + '; rows: ' +
    (await page.$$eval('[data-test^="cert-"]', (els) => els.map((e) => e.getAttribute('data-test')).join(', ')))));
  const r = page.locator(row);
  const s1 = await r.locator(dt('sha1')).textContent(), s256 = await r.locator(dt('sha256')).textContent();
  if (hex(s1) !== hex(S.sha1) || hex(s256) !== hex(S.sha256)) fail('certificates: thumbprints shown ' + s1 + ' / ' + s256 + ', expected ' + S.sha1 + ' / ' + S.sha256);
  await r.locator(dt('copy-sha256')).click();
  const clip = await page.evaluate(() => navigator.clipboard.readText()).catch((e) => 'clipboard unreadable: ' + e.message);
  if (hex(clip) !== hex(S.sha256)) fail('certificates: Copy put "' + clip + '" on the clipboard');
  await r.locator(dt('use-farm') + ' option[value="' + S.name + '"]').waitFor({ state: 'attached' })
    .catch(() => fail('certificates: the "Use for farm" list does not offer farm ' + S.name));
  await r.locator(dt('use-farm')).selectOption(S.name);
  await r.locator(dt('use-for-farm')).click();
  await waitBanner(new RegExp('Farm ' + S.name + ' now presents'), 'use for farm');
  await ask('cert-used', { farm: S.name });
  /* the request the test just sent through the farm signed on the token: count and latency */
  await page.click(dt('refresh-tokens'));
  const kv = async (k) => page.evaluate(([sel, key]) => {
    for (const d of document.querySelectorAll(sel + ' dl.kv > div')) {
      const t = d.querySelector('dt');
      if (t && t.textContent === key) return d.querySelector('dd').textContent;
    }
    return null;
  }, [tok, k]);
  await page.waitForFunction((sel) => !!document.querySelector(sel + ' dl.kv'), tok);
  await page.waitForTimeout(300);
  const sigs = await kv('Signatures');
  if (!(Number(String(sigs).replace(/,/g, '')) >= 1)) fail('certificates: token ' + S.token + ' shows ' + sigs + ' signatures after a request through farm ' + S.name);
  const lat = await kv('Average signature time');
  if (!/\d ms$/.test(lat || '')) fail('certificates: token ' + S.token + ' made ' + sigs + ' signature(s) but shows the average signature time as "' + lat + '"');
  await shot('certificates');

  /* the editor shows it, and its picker offers the certificate by name */
  await page.goto(base + '/#/farms/' + encodeURIComponent(S.name));
  await page.waitForSelector(byName('protocol.clientCertHash'));
  const shown = await page.inputValue(byName('protocol.clientCertHash'));
  if (hex(shown) !== hex(S.sha256)) fail('farm editor: clientCertHash shows "' + shown + '", expected ' + S.sha256);
  await page.waitForFunction(() => !document.querySelector('[data-test="cert-picker"]').disabled)
    .catch(() => fail('farm editor: the certificate picker stayed disabled'));
  const opt = await page.$$eval(dt('cert-picker') + ' option', (os) => os.map((o) => [o.value, o.textContent]));
  const mine = opt.find(([v]) => v && hex(JSON.parse(v)[1]) === hex(S.sha256));
  if (!mine) fail('farm editor: the picker does not offer the certificate: ' + JSON.stringify(opt));
  await page.fill(byName('protocol.clientCertHash'), '');
  await page.selectOption(dt('cert-picker'), mine[0]);
  if (hex(await page.inputValue(byName('protocol.clientCertHash'))) !== hex(S.sha256)) fail('farm editor: picking the certificate did not fill clientCertHash');

  /* ---- dashboard: live health and server actions ----------------------------------------- */
  at('dashboard');
  await page.goto(base + '/#/dashboard');
  const srv = W.servers.map((s) => dt('farm-' + W.name) + ' ' + dt('server-' + W.name + '-' + s.address + ':' + s.httpPort));
  await page.waitForSelector(srv[1]);
  const health = (i) => page.getAttribute(srv[i] + ' ' + dt('health'), 'data-healthy');
  const state = (i) => page.getAttribute(srv[i] + ' ' + dt('state'), 'data-state');
  async function until(what, fn, ms) {
    const end = Date.now() + (ms || 12000);
    for (;;) {
      const v = await fn().catch(() => null);
      if (v === true) return;
      if (Date.now() > end) fail('dashboard: ' + what + ' did not happen within ' + (ms || 12000) / 1000 + ' s');
      await page.waitForTimeout(200);
    }
  }
  await until('both servers healthy', async () => (await health(0)) === 'true' && (await health(1)) === 'true');
  const sc = await page.textContent(srv[0] + ' ' + dt('server-config'));
  if (!sc.includes('HTTP ' + W.servers[0].httpPort + ' · HTTPS ' + (W.servers[0].httpsPort || 443) + ' · weight '))
    fail('dashboard: server 1\'s ports and weight read "' + sc + '"');
  const fs0 = await page.getAttribute(dt('farm-' + W.name) + ' ' + dt('farm-state'), 'data-state');
  if (fs0 !== 'Online') fail('dashboard: farm ' + W.name + ' is ' + fs0);
  await page.evaluate(() => { window.__noReload = 1; });
  const stamp0 = await page.textContent(dt('updated'));
  await shot('dashboard');

  await ask('backend-stop', { server: 1 });
  await until('server 2 turning unhealthy after its backend stopped', async () => (await health(1)) === 'false');
  if ((await health(0)) !== 'true') fail('dashboard: server 1 turned unhealthy too');
  const reason = await page.textContent(srv[1] + ' ' + dt('health-reason'));
  if (!/ConnectionFailure/.test(reason)) fail('dashboard: the unhealthy server\'s reason is "' + reason + '"');
  if (!(await page.evaluate(() => window.__noReload === 1))) fail('dashboard: the page reloaded instead of updating in place');
  await until('[data-test=updated] moving on', async () => (await page.textContent(dt('updated'))) !== stamp0, 5000);
  await shot('dashboard-unhealthy');
  await ask('backend-start', { server: 1 });
  await until('server 2 healthy again after its backend restarted', async () => (await health(1)) === 'true');

  /* drain server 1: Disallow New Connections */
  at('drain');
  await page.click(srv[0] + ' ' + dt('action-drain'));
  await until('server 1 shown as DisallowNewConnections', async () => (await state(0)) === 'DisallowNewConnections', 6000);
  if ((await page.getAttribute(srv[0] + ' ' + dt('action-drain'), 'aria-pressed')) !== 'true') fail('drain: the pressed button is not marked');
  if ((await page.textContent(srv[0] + ' ' + dt('state'))) !== 'Disallow New Connections') fail('drain: the state badge does not use ARR\'s words');
  await waitBanner(/Disallow New Connections/, 'drain');
  await ask('drained', { server: 0 });
  await page.click(srv[0] + ' ' + dt('action-available'));
  await until('server 1 Available again', async () => (await state(0)) === 'Available', 6000);
  await ask('available', { server: 0 });
  if (!(await page.evaluate(() => window.__noReload === 1))) fail('dashboard: the page reloaded');
  await noInjectedImg('dashboard');

  /* ---- system ------------------------------------------------------------------------- */
  at('system');
  await nav('nav-system', '#/system');
  await page.waitForFunction(() => {
    const d = document.querySelector('[data-test="sys-version"] dd');
    return d && d.textContent && d.textContent !== 'Loading…' && d.textContent !== '–';
  }).catch(() => fail('system: no version shown'));
  await page.waitForFunction(() => document.querySelectorAll('[data-test="audit"] tbody tr').length > 0)
    .catch(() => fail('system: the audit log stayed empty'));
  const audit = await page.textContent(dt('audit'));
  if (!audit.includes('farm ' + W.name + ' added')) fail('system: the audit log does not record the new farm: ' + audit.slice(0, 400));
  /* who: the browser's address, in every row */
  const who = await page.$$eval(dt('audit') + ' tbody tr', (rows) => rows.map((r) => r.cells[1] && r.cells[1].textContent));
  const nobody = who.filter((x) => !/127\.0\.0\.1/.test(x || ''));
  if (nobody.length) fail('system: ' + nobody.length + ' of ' + who.length + ' audit rows do not say who (column 2 shows ' + JSON.stringify(nobody.slice(0, 3)) + ')');
  await page.waitForFunction(() => (document.querySelector('[data-test="logs"]') || {}).textContent);
  const offered = await page.locator(dt('reboot') + ', ' + dt('factory-reset')).count();
  if (offered !== (A.systemActions ? 2 : 0))
    fail('system: ' + offered + ' of the reboot / factory reset cards shown, farmgate-mgmt ' + (A.systemActions ? 'with' : 'without') + ' -x');
  await shot('system');

  /* ---- the end ------------------------------------------------------------------------ */
  at('checks');
  async function checks() {
    const csp = await page.evaluate(() => window.__csp || []);
    const problems = [];
    if (dialogs.length) problems.push('JavaScript dialogs opened: ' + dialogs.join(' | '));
    if (pageErrors.length) problems.push('uncaught page errors: ' + pageErrors.join(' | '));
    if (csp.length) problems.push('CSP violations: ' + csp.join(' | '));
    if (consoleProblems.length) problems.push('console errors/warnings: ' + consoleProblems.join(' | '));
    if (problems.length) fail(problems.join('\n'));
  }
  await checks();
  if (!A.systemActions) {
    await page.click(dt('logout'));
    await hashIs('#/login', 'sign out at the end');
    return;
  }

  /* ---- reboot, then factory reset (farmgate-mgmt -x) ------------------------------------ */
  async function says(test, re, what) {
    await page.waitForFunction(([sel, src]) => new RegExp(src, 'i').test((document.querySelector(sel) || {}).textContent || ''),
      [dt(test), re.source]).catch(() => fail(what));
  }
  /* after "Rebooting…": the test restarts farmgate-mgmt (ask), the page notices on its own
   * and loads again, at hash with the input #field */
  async function comesBack(what, hash, field) {
    await says('system-action-status', /Rebooting…/, what + ': the page did not say "Rebooting…" after the 202');
    await shot(what);
    restarting = true;
    await ask(what === 'rebooting' ? 'rebooted' : 'reset');
    await page.waitForFunction(([h, id]) => location.hash === h && document.getElementById(id), [hash, field], { timeout: 20000 })
      .catch(() => fail(what + ': the page did not come back to ' + hash + ' (at ' + page.url() + ')'));
    restarting = false;
  }
  at('reboot');
  expect(403, /\/api\/v1\/system\/reboot$/);
  await page.fill('#reboot-password', A.password + '-wrong');
  await page.click(dt('reboot-submit'));
  await says('reboot-error', /wrong password/, 'reboot: a wrong password did not say so');
  if ((await page.inputValue('#reboot-password')) !== '') fail('reboot: the password field kept the password');
  await page.fill('#reboot-password', A.password);
  await page.click(dt('reboot-submit'));
  await comesBack('rebooting', '#/login', 'password'); /* the session is gone: sign-in */
  await page.fill('#password', A.password);
  await page.click('#login');
  await hashIs('#/system', 'sign-in after the reboot leads back to the System page');

  at('factory-reset');
  await page.waitForSelector(dt('factory-reset') + ':visible');
  await page.fill('#reset-password', A.password);
  await page.fill('#reset-confirm', 'yes');
  await page.click(dt('factory-reset-submit'));
  await says('factory-reset-error', /factory-reset/, 'factory reset: a wrong confirmation word was not refused by the page');
  await page.fill('#reset-confirm', 'factory-reset');
  await page.click(dt('factory-reset-submit'));
  await page.waitForSelector(dt('setup-code-needed')).catch(() => fail('factory reset: no word about the setup code after the 202'));
  await comesBack('factory-reset', '#/setup', 'setup-code'); /* no password any more: setup */
  await checks();
}

const killer = setTimeout(() => {
  out({ result: 'fail', step, error: 'ui_flow took longer than ' + TIMEOUT / 1000 + ' s (at step ' + step + ')', steps, screenshots: shots });
  process.exit(1);
}, TIMEOUT);

main().then(() => {
  clearTimeout(killer);
  out({ result: 'pass', steps, screenshots: shots, knownGaps, seconds: (Date.now() - T0) / 1000 });
  process.exit(0);
}, (e) => {
  clearTimeout(killer);
  out({
    result: 'fail', step, error: String(e && e.message || e), stack: String(e && e.stack || ''),
    steps, screenshots: shots, dialogs, pageErrors, console: consoleProblems, knownGaps,
  });
  process.exit(1);
});
