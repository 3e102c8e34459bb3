/*! supportbot widget: one file, no build step, no dependencies. See docs/widget.md. */
(() => {
  'use strict';

  const W = window, D = document;
  const fail = (m) => console.error('SupportBot: ' + m);
  // currentScript is only set while this runs synchronously.
  const me = D.currentScript ||
    [...D.getElementsByTagName('script')].reverse().find((s) => /widget\.js([?#].*)?$/.test(s.src));
  if (!me || !me.src) return fail('cannot find its own <script> tag.');
  const siteKey = me.getAttribute('data-site-key');
  if (!siteKey) return fail('the <script> tag needs a data-site-key attribute.');
  if (W.__supportbot) return fail('loaded twice; this copy does nothing.');
  W.__supportbot = 1;

  const src = new URL(me.src, location.href);
  const BASE = src.origin + ((/^(.*\/)static\/supportbot\/widget\.js$/.exec(src.pathname) || [])[1] || '/');
  const WS_BASE = (src.protocol === 'https:' ? 'wss://' : 'ws://') + src.host;
  const MAX_CHARS = 4000;
  const ROLES = ['visitor', 'assistant', 'agent', 'system'];
  const STATES = ['complete', 'streaming', 'failed', 'withdrawn'];
  const NOTICE = { bot: '', waiting: 'Connecting you with a person…', agent: 'An agent joined', closed: 'This conversation is closed.' };
  const TXT = {
    tooLong: 'That message is too long (4,000 characters at most).',
    generic: 'Something went wrong. Please try again.',
  };

  // localStorage, or memory when it is unavailable
  const PREFIX = `supportbot:${siteKey}:`;
  const mem = {};
  let lsBroken = false;
  const store = {
    get(k) {
      if (!lsBroken) try { return localStorage.getItem(PREFIX + k); } catch { lsBroken = true; }
      return k in mem ? mem[k] : null;
    },
    set(k, v) {
      mem[k] = v;
      try { localStorage.setItem(PREFIX + k, v); } catch { lsBroken = true; }
    },
  };

  const h = (tag, attrs, kids) => {
    const el = D.createElement(tag);
    for (const k in attrs || {}) {
      const v = attrs[k];
      if (v == null || v === false) continue;
      if (k === 'text') el.textContent = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : v);
    }
    if (kids) el.append(...kids);
    return el;
  };
  const NS = 'http://www.w3.org/2000/svg';
  const icon = (d, cls) => {
    const s = D.createElementNS(NS, 'svg'), p = D.createElementNS(NS, 'path');
    s.setAttribute('viewBox', '0 0 24 24');
    s.setAttribute('aria-hidden', 'true');
    s.setAttribute('focusable', 'false');
    if (cls) s.setAttribute('class', cls);
    p.setAttribute('d', d);
    s.append(p);
    return s;
  };
  const str = (v, n) => (typeof v === 'string' ? v.slice(0, n || 1e5) : '');
  const uuid = () => {
    try { return crypto.randomUUID(); } catch { /* not a secure context */ }
    return 'c-' + [...crypto.getRandomValues(new Uint8Array(16))].map((v) => (v + 256).toString(16).slice(1)).join('');
  };

  // Markdown, built as DOM nodes and text only (never HTML strings)
  // Absolute http(s)/mailto only: a relative link would resolve against the host
  // page and let a model point at the customer's own pages.
  const safeUrl = (href) => {
    if (!href || !/^(https?:\/\/|mailto:)/i.test(href)) return null;
    try {
      const u = new URL(href);
      return /^(https?|mailto):$/.test(u.protocol) ? u.href : null;
    } catch { return null; }
  };
  // Articles an answer drew on: at most 5, titles cut to 120 characters
  const cite = (a) => a.filter((c) => c && str(c.title).trim()).slice(0, 5).map((c) => {
    const t = [...str(c.title, 1000).replace(/\s+/g, ' ').trim()];
    return { title: t.length > 120 ? t.slice(0, 119).join('').trimEnd() + '…' : t.join(''), url: str(c.url, 2000) };
  });
  const link = (href, text) => h('a', { href, target: '_blank', rel: 'noopener noreferrer', text });
  const INLINE = /`([^`\n]+)`|\[([^\]\n]+)\]\(\s*<?([^\s<>()]*(?:\([^\s<>()]*\)[^\s<>()]*)*)>?(?:\s+"[^"\n]*")?\s*\)|\*\*(?=\S)([\s\S]*?\S)\*\*|\*(?=[^\s*])([\s\S]*?[^\s*])\*|(https?:\/\/[^\s<>"]*[^\s<>".,;:!?'()[\]])/;
  // Inline markup costs O(n^2) on a pathological line, so very long lines stay plain.
  const inline = (s, el, inLink) => {
    if (s.length > 3000) { el.append(s); return; }
    for (let m; s && (m = INLINE.exec(s)); s = s.slice(m.index + m[0].length)) {
      if (m.index) el.append(s.slice(0, m.index));
      if (m[1] != null) el.append(h('code', { text: m[1] }));
      else if (m[2] != null) {
        const u = !inLink && safeUrl(m[3]);
        if (u) { const a = link(u); inline(m[2], a, 1); el.append(a); }
        else inline(m[2], el, inLink);
      } else if (m[6] != null) {
        const u = !inLink && safeUrl(m[6]);
        el.append(u ? link(u, m[6]) : m[6]);
      } else {
        const b = h(m[4] == null ? 'em' : 'strong');
        inline(m[4] ?? m[5], b, inLink);
        el.append(b);
      }
    }
    if (s) el.append(s);
  };
  const markdown = (text, el) => {
    const lines = text.replace(/\r\n?/g, '\n').split('\n');
    let para = null, list = null, ordered = false, item = null;
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      let m;
      if ((m = /^\s{0,3}(`{3,}|~{3,})/.exec(line))) {
        const fence = m[1], body = [];
        while (++i < lines.length && !(lines[i].trim().startsWith(fence) && /^[`~]+$/.test(lines[i].trim()))) body.push(lines[i]);
        el.append(h('pre', null, [h('code', { text: body.join('\n') })]));
        para = list = null;
      } else if (!line.trim()) {
        para = list = null;
      } else if (/^\s{0,3}([-*_])(\s*\1){2,}\s*$/.test(line)) {
        el.append(h('hr'));
        para = list = null;
      } else if ((m = /^\s{0,3}#{1,6}\s+(.*?)[\s#]*$/.exec(line))) {
        const b = h('strong');
        inline(m[1], b);
        el.append(h('p', null, [b]));
        para = list = null;
      } else if ((m = /^\s*(?:[-*+]|(\d{1,9})[.)])\s+(.*)$/.exec(line))) {
        if (!list || ordered !== (m[1] != null)) {
          ordered = m[1] != null;
          list = h(ordered ? 'ol' : 'ul', ordered && m[1] !== '1' ? { start: +m[1] } : null);
          el.append(list);
        }
        item = h('li');
        inline(m[2], item);
        list.append(item);
        para = null;
      } else if (list && /^\s/.test(line)) {
        item.append(h('br'));
        inline(line.trim(), item);
      } else {
        if (para) para.append(h('br'));
        else el.append((para = h('p')));
        list = null;
        inline(line, para);
      }
    }
  };

  let token = store.get('token');
  let conv = null;
  try {
    const c = JSON.parse(store.get('conversation'));
    if (c && typeof c === 'object') conv = c;
  } catch { /* none */ }
  if (!conv || typeof conv.id !== 'string' || !/^\/[\w/.-]*$/.test(conv.ws)) conv = { id: null, outbox: conv && conv.outbox };
  // Messages without an echo yet, resent with the same client_id
  const outbox = (Array.isArray(conv.outbox) ? conv.outbox : [])
    .filter((o) => o && typeof o.cid === 'string' && typeof o.text === 'string')
    .map((o) => ({ cid: o.cid, text: o.text, unsent: !!o.unsent }));
  const byId = new Map(), byCid = new Map(), tries = new Map(), unseen = new Set();
  let status = 'bot', statusNote = '', connState = 'connecting', dead = false;
  let ws = null, gen = 0, ready = false, replaying = false, attempt = 0, everOnline = false;
  let creating = false, wantHandoff = false, pinned = true;
  let retryT, pingT, pongT, syncT, typingT, saveT;
  // Every event with seq <= synced is held in final form
  let synced = 0, readyTarget = Infinity;
  const seen = new Set();
  let ui = null, wantOpen = false;

  const saw = (seq) => {
    if (!Number.isInteger(seq) || seq <= synced) return;
    seen.add(seq);
    while (seen.delete(synced + 1)) synced++;
  };
  const safeSeq = () => {
    let s = synced;
    for (const r of byId.values()) if (r.status === 'streaming' && r.seq <= s) s = r.seq - 1;
    return Math.max(0, s);
  };
  const saveNow = () => {
    clearTimeout(saveT);
    const messages = [...byId.values()]
      .filter((r) => r.status !== 'streaming')
      .sort((a, b) => a.seq - b.seq)
      .slice(-40)
      .map((r) => ({
        id: r.id, seq: r.seq, role: r.role, text: r.text, status: r.status,
        client_id: r.cid || undefined, sources: r.src.length ? r.src : undefined,
      }));
    store.set('conversation', JSON.stringify({
      id: conv.id, ws: conv.ws, status, lastSeq: safeSeq(), messages,
      outbox: outbox.map(({ cid, text, unsent }) => ({ cid, text, unsent })),
    }));
  };
  const save = () => { clearTimeout(saveT); saveT = setTimeout(saveNow, 150); };

  const api = (W.SupportBot = {
    ready: false,
    open: () => setOpen(true),
    close: () => setOpen(false),
    toggle: () => setOpen(!isOpen()),
    isOpen: () => isOpen(),
  });
  const isOpen = () => (ui ? !ui.panel.hidden : wantOpen);

  const CSS = `
:host{all:initial}
.sb-root{all:initial;display:block;font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;font-size:14px;line-height:20px;font-weight:400;color:#1f2328;text-align:left;--sb-accent:#1f4e79;--sb-on:#fff}
.sb-root *{box-sizing:border-box}
.sb-root [hidden]{display:none!important}
button,textarea{font:inherit;color:inherit;margin:0;letter-spacing:inherit}
button{cursor:pointer;background:none;border:0;padding:0}
button:disabled{cursor:default;opacity:.5}
svg{display:block;width:22px;height:22px;fill:none;stroke:currentColor;stroke-width:2;stroke-linecap:round;stroke-linejoin:round}
:focus-visible{outline:2px solid #2563eb;outline-offset:2px}
.sb-launcher{position:fixed;right:20px;bottom:20px;width:56px;height:56px;border-radius:50%;background:var(--sb-accent);color:var(--sb-on);display:flex;align-items:center;justify-content:center;box-shadow:0 4px 14px rgba(0,0,0,.22),0 1px 3px rgba(0,0,0,.14);transition:transform .15s ease}
.sb-launcher:hover{transform:scale(1.06)}
.sb-launcher svg{width:28px;height:28px}
.sb-i-close,.sb-open .sb-i-chat{display:none}
.sb-open .sb-i-close{display:block}
.sb-badge{position:absolute;top:-3px;right:-3px;min-width:20px;height:20px;padding:0 6px;border-radius:10px;background:#d93025;color:#fff;font-size:12px;line-height:20px;font-weight:600;text-align:center;box-shadow:0 0 0 2px #fff}
.sb-panel{position:fixed;right:20px;bottom:88px;width:380px;height:600px;max-width:calc(100% - 40px);max-height:calc(100% - 108px);display:flex;flex-direction:column;background:#fff;border-radius:16px;overflow:hidden;box-shadow:0 12px 48px rgba(0,0,0,.2),0 2px 8px rgba(0,0,0,.08);transform-origin:100% 100%;animation:sb-in .2s ease-out}
@keyframes sb-in{from{opacity:0;transform:translateY(12px) scale(.98)}}
.sb-header{flex:none;display:flex;align-items:center;gap:12px;padding:14px 10px 14px 16px;background:var(--sb-accent);color:var(--sb-on)}
.sb-avatar{flex:none;width:36px;height:36px;border-radius:50%;background:rgba(255,255,255,.22);display:flex;align-items:center;justify-content:center;font-size:16px;font-weight:600}
.sb-head{flex:1;min-width:0}
.sb-title{margin:0;font-size:16px;line-height:22px;font-weight:600;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.sb-sub{font-size:12px;line-height:16px;opacity:.85;display:flex;align-items:center;gap:6px}
.sb-sub::before{content:"";width:8px;height:8px;border-radius:50%;background:#9aa4b2}
[data-connection=online] .sb-sub::before{background:#31c46c}
.sb-close{flex:none;width:36px;height:36px;border-radius:8px;display:flex;align-items:center;justify-content:center}
.sb-close:hover{background:rgba(127,127,127,.22)}
.sb-close:focus-visible{outline-color:currentColor;outline-offset:-2px}
.sb-body{flex:1;overflow-y:auto;overscroll-behavior:contain;padding:16px 14px;background:#f6f7f9}
.sb-messages{display:flex;flex-direction:column;gap:8px}
.sb-message{max-width:85%;align-self:flex-start;display:flex;flex-direction:column;align-items:flex-start;animation:sb-pop .18s ease-out}
@keyframes sb-pop{from{opacity:0;transform:translateY(4px)}}
.sb-text{padding:9px 13px;border-radius:16px 16px 16px 4px;background:#fff;border:1px solid #e3e6ea;overflow-wrap:anywhere;min-height:38px}
.sb-message[data-role=visitor]{align-self:flex-end;align-items:flex-end}
.sb-message[data-role=visitor] .sb-text{background:var(--sb-accent);color:var(--sb-on);border-color:transparent;border-radius:16px 16px 4px 16px;white-space:pre-wrap}
.sb-message[data-role=agent] .sb-text{border-left:3px solid var(--sb-accent)}
.sb-message[data-role=system]:not(.sb-greeting){align-self:center;max-width:100%}
.sb-message[data-role=system]:not(.sb-greeting) .sb-text{background:none;border:0;min-height:0;padding:2px 8px;color:#5f6b7a;font-size:12px;line-height:16px;text-align:center;white-space:pre-wrap}
.sb-message[data-status=pending]{opacity:.6}
.sb-message[data-status=unsent] .sb-text{background:#fff;color:#1f2328;border:1px dashed #d93025}
.sb-message[data-status=failed] .sb-text:empty{display:none}
.sb-message[data-status=withdrawn] .sb-text{color:#5f6b7a;font-style:italic}
.sb-message[data-status=streaming] .sb-text>:last-child::after,.sb-message[data-status=streaming] .sb-text:empty::after{content:"";display:inline-block;width:7px;height:14px;margin-left:2px;vertical-align:-2px;background:currentColor;opacity:.45;animation:sb-blink 1s steps(2,start) infinite}
@keyframes sb-blink{to{visibility:hidden}}
.sb-meta{margin-top:4px;font-size:12px;line-height:16px;color:#5f6b7a;display:flex;flex-wrap:wrap;gap:4px 10px;align-items:center}
.sb-retry{color:#b3261e;font-weight:600;text-decoration:underline}
.sb-sources{margin-top:4px;padding:0 4px;font-size:12px;line-height:16px;color:#5f6b7a;overflow-wrap:anywhere}
.sb-sources ul{margin:0;padding:0;list-style:none;line-height:20px}
a.sb-source{color:#0b57d0;text-decoration:underline}
.sb-text p,.sb-text ul,.sb-text ol,.sb-text pre{margin:0 0 8px}
.sb-text>:last-child{margin-bottom:0}
.sb-text ul,.sb-text ol{padding-left:20px}
.sb-text hr{border:0;border-top:1px solid #e3e6ea;margin:8px 0}
.sb-text a{color:#0b57d0;text-decoration:underline}
.sb-text code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px;background:rgba(0,0,0,.06);padding:1px 4px;border-radius:4px}
.sb-text pre{background:#1f2328;color:#f6f8fa;padding:10px 12px;border-radius:8px;overflow-x:auto;white-space:pre;line-height:18px}
.sb-text pre code{background:none;padding:0;color:inherit}
.sb-typing{display:inline-flex;gap:4px;margin-top:8px;padding:14px;background:#fff;border:1px solid #e3e6ea;border-radius:16px 16px 16px 4px}
.sb-typing i{width:7px;height:7px;border-radius:50%;background:#8a94a3;animation:sb-dot 1.2s infinite ease-in-out}
.sb-typing i:nth-child(2){animation-delay:.15s}
.sb-typing i:nth-child(3){animation-delay:.3s}
@keyframes sb-dot{0%,60%,100%{opacity:.35;transform:none}30%{opacity:1;transform:translateY(-3px)}}
.sb-sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
.sb-notice{flex:none;padding:6px 16px;font-size:12px;line-height:16px;color:#4b5563;text-align:center;background:#eef1f5;border-top:1px solid #e3e6ea}
.sb-error{flex:none;margin:0;padding:8px 16px;font-size:13px;line-height:18px;color:#8c1d18;background:#fdecea;border-top:1px solid #f5c6c2}
.sb-composer{flex:none;display:flex;align-items:flex-end;gap:8px;padding:10px 12px 8px;background:#fff;border-top:1px solid #e6e8eb}
.sb-input{flex:1;display:block;resize:none;height:40px;min-height:40px;max-height:120px;padding:9px 12px;border:1px solid #d0d5db;border-radius:12px;background:#fff;color:#1f2328;font-size:14px;line-height:20px;overflow-y:auto;outline:0}
.sb-input::placeholder{color:#8a94a3;opacity:1}
.sb-input:focus{border-color:var(--sb-accent);box-shadow:0 0 0 1px var(--sb-accent)}
.sb-narrow .sb-input{font-size:16px}
.sb-input:disabled{background:#f3f4f6;color:#8a94a3}
.sb-send{flex:none;width:40px;height:40px;border-radius:50%;background:var(--sb-accent);color:var(--sb-on);display:flex;align-items:center;justify-content:center}
.sb-send svg{width:20px;height:20px}
.sb-footer{flex:none;display:flex;justify-content:center;gap:8px;padding:0 12px 10px;background:#fff}
.sb-handoff{padding:5px 12px;border:1px solid #d0d5db;border-radius:999px;font-size:12px;line-height:16px;color:#3c4650}
.sb-handoff:hover:not(:disabled),.sb-retry:hover{background:#f1f3f5}
.sb-new{padding:8px 16px;border-radius:999px;background:var(--sb-accent);color:var(--sb-on);font-size:13px;line-height:18px;font-weight:600}
.sb-narrow .sb-panel{inset:0;width:auto;height:auto;max-width:none;max-height:none;border-radius:0}
.sb-narrow.sb-open .sb-launcher{display:none}
@media (prefers-reduced-motion:reduce){*,::after{animation:none!important;transition:none!important}}
`;

  const place = (r) => {
    const log = ui.log;
    r.el.sbSeq = r.seq;
    if (r.seq != null) {
      for (const c of log.children) {
        if (c === r.el || c.classList.contains('sb-greeting')) continue;
        if (c.sbSeq == null || c.sbSeq > r.seq) return log.insertBefore(r.el, c);
      }
    }
    if (r.el.parentNode !== log || r.seq != null) log.append(r.el);
  };
  const draw = (r) => {
    if (!r.el) {
      r.tx = h('div', { class: 'sb-text' });
      r.el = h('div', { class: 'sb-message' }, [r.tx]);
    }
    const set = (k, v) => (v == null ? r.el.removeAttribute(k) : r.el.setAttribute(k, v));
    set('data-role', r.role);
    set('data-status', r.status);
    set('data-message-id', r.id);
    set('data-client-id', r.role === 'visitor' ? r.cid : null);
    r.tx.replaceChildren();
    if (r.status === 'withdrawn') r.tx.textContent = 'This answer was removed.';
    else if (r.role === 'assistant' || r.role === 'agent') markdown(r.text, r.tx);
    else r.tx.textContent = r.text;
    if (r.cites) r.cites.remove();
    r.cites = null;
    // Only http(s) links: the server's URLs are not trusted either
    if (r.role === 'assistant' && r.status === 'complete' && r.src.length) {
      r.el.append((r.cites = h('div', { class: 'sb-sources' }, ['Sources:', h('ul', null, r.src.map((c) => {
        const u = safeUrl(c.url);
        return h('li', null, [u && /^https?:/.test(u)
          ? h('a', { class: 'sb-source', href: u, target: '_blank', rel: 'noopener noreferrer nofollow', text: c.title })
          : h('span', { class: 'sb-source', text: c.title })]);
      }))])));
    }
    if (r.meta) r.meta.remove();
    r.meta = null;
    const meta = [];
    if (r.status === 'failed') meta.push(r.text ? 'This answer was cut short.' : "The assistant couldn't answer this time.");
    if (r.status === 'unsent') meta.push('Not sent.', h('button', { type: 'button', class: 'sb-retry', text: 'Retry', onclick: () => retrySend(r) }));
    if (meta.length) r.el.append((r.meta = h('div', { class: 'sb-meta' }, meta)));
  };
  const busy = () => {
    let any = false;
    for (const r of byId.values()) any = any || r.status === 'streaming';
    ui.log.setAttribute('aria-busy', any);
  };
  const showError = (msg) => {
    ui.error.textContent = msg || '';
    ui.error.hidden = !msg;
  };
  const renderNotice = () => {
    const t = connState === 'offline' && !dead ? 'Reconnecting…' : statusNote;
    ui.notice.textContent = t;
    ui.notice.hidden = !t;
    ui.sub.textContent = connState === 'online'
      ? { bot: 'The assistant replies instantly', waiting: 'Waiting for a person', agent: 'Chatting with a person', closed: 'Conversation closed' }[status]
      : connState === 'connecting' ? 'Connecting…' : 'Offline';
  };
  const setConn = (s) => {
    connState = s;
    ui.panel.setAttribute('data-connection', s);
    renderNotice();
  };
  const setTyping = (on, role) => {
    clearTimeout(typingT);
    ui.typing.hidden = !on;
    ui.typingText.textContent = `${role === 'agent' ? 'An agent' : 'The assistant'} is typing`;
    if (on) typingT = setTimeout(() => setTyping(false), 60000);
  };
  const applyStatus = (s, fresh) => {
    if (!(s in NOTICE)) return;
    const prev = status;
    status = s;
    if (fresh || s !== prev) statusNote = NOTICE[s] || (!fresh && prev !== 'bot' ? 'Back with the assistant.' : '');
    const closed = s === 'closed';
    ui.input.disabled = ui.send.disabled = closed;
    ui.handoff.disabled = s !== 'bot';
    ui.handoff.hidden = closed;
    ui.newBtn.hidden = !closed;
    if (closed && ui.root.activeElement && ui.composer.contains(ui.root.activeElement)) ui.newBtn.focus();
    renderNotice();
  };
  // Replies that started or finished while the panel was closed
  const unread = (id) => {
    if (id && !isOpen()) unseen.add(id);
    if (!id) unseen.clear();
    ui.badge.textContent = unseen.size > 9 ? '9+' : unseen.size;
    ui.badge.hidden = !unseen.size;
  };

  const upsert = (m) => {
    if (!m || (typeof m.id !== 'string' && typeof m.id !== 'number')) return false;
    const id = String(m.id);
    const cid = typeof m.client_id === 'string' ? m.client_id : null;
    let r = byId.get(id) || (cid && byCid.get(cid));
    const isNew = !r;
    const st = STATES.includes(m.status) ? m.status : 'complete';
    if (r && r.id === id && r.status !== 'streaming' && st === 'streaming') return false;
    r = r || {};
    const moved = r.seq !== m.seq;
    Object.assign(r, {
      id, seq: Number.isInteger(m.seq) ? m.seq : r.seq, status: st,
      role: ROLES.includes(m.role) ? m.role : 'system',
      text: st === 'withdrawn' ? '' : str(m.text),
      src: Array.isArray(m.sources) ? cite(m.sources) : r.src || [],
      cid: cid || r.cid,
    });
    // next delta index; null: take the first that comes
    if (st === 'streaming') r.next = Number.isInteger(m.next_index) ? m.next_index : r.text ? null : 0;
    byId.set(id, r);
    if (r.cid) {
      byCid.set(r.cid, r);
      const i = outbox.findIndex((o) => o.cid === r.cid);
      if (i >= 0 && !outbox[i].wait) { outbox.splice(i, 1); saveNow(); }
    }
    draw(r);
    if (moved || isNew) place(r);
    busy();
    return isNew;
  };
  const addPending = (o) => {
    const r = { cid: o.cid, role: 'visitor', text: o.text, status: o.unsent ? 'unsent' : 'pending' };
    byCid.set(o.cid, r);
    draw(r);
    place(r);
  };
  const onDelta = (f) => {
    const r = byId.get(String(f.message_id));
    if (!r || r.status !== 'streaming' || !Number.isInteger(f.index) || typeof f.text !== 'string') return;
    if (r.next != null && f.index < r.next) return;
    r.text += f.text; // after a gap, `done` repairs the text
    r.next = f.index + 1;
    draw(r);
  };

  const sendFrame = (f) => { try { ws.send(JSON.stringify(f)); return true; } catch { return false; } };
  const flush = () => {
    if (!ready || replaying) return;
    for (const o of outbox) {
      if (o.sent === gen || o.wait || o.unsent) continue;
      o.sent = gen;
      sendFrame({ type: 'message', text: o.text, client_id: o.cid });
    }
    if (wantHandoff && sendFrame({ type: 'handoff' })) wantHandoff = false;
  };
  // Tell a person who answers that the visitor is typing: once when typing starts,
  // again every few seconds while it goes on, and off after a pause or on send.
  let typingOn = false, typingAt = 0, idleT;
  const typingFrame = (on) => {
    if (on === typingOn && (!on || Date.now() - typingAt < 3000)) return;
    if (sendFrame({ type: 'typing', on })) { typingOn = on; typingAt = Date.now(); }
  };
  const typed = () => {
    if (!conv.id || (status !== 'agent' && status !== 'waiting')) return;
    typingFrame(ui.input.value.trim() !== '');
    clearTimeout(idleT);
    idleT = setTimeout(() => typingFrame(false), 4000);
  };
  const submit = () => {
    if (typingOn) { clearTimeout(idleT); typingFrame(false); }
    const text = ui.input.value.trim();
    if (!text || status === 'closed') return;
    if ([...text].length > MAX_CHARS) return showError(TXT.tooLong);
    showError('');
    const o = { cid: uuid(), text };
    outbox.push(o);
    ui.input.value = '';
    grow();
    addPending(o);
    pinned = true;
    ui.body.scrollTop = ui.body.scrollHeight;
    saveNow();
    if (conv.id) flush();
    else create();
  };
  const reject = (cid) => {
    const i = outbox.findIndex((o) => o.cid === cid);
    const r = byCid.get(cid);
    if (i < 0 || !r || r.id) return;
    const o = outbox[i];
    if (!ui.input.value.trim()) {
      outbox.splice(i, 1);
      byCid.delete(cid);
      r.el.remove();
      ui.input.value = o.text;
      grow();
    } else {
      o.unsent = true;
      r.status = 'unsent';
      draw(r);
    }
    saveNow();
  };
  const retrySend = (r) => {
    const o = outbox.find((x) => x.cid === r.cid);
    if (!o) return;
    o.unsent = false;
    o.sent = 0;
    r.status = 'pending';
    draw(r);
    showError('');
    saveNow();
    if (conv.id) flush();
    else create();
  };
  const retryLater = (cid) => {
    let o = outbox.find((x) => x.cid === cid);
    const r = byCid.get(cid);
    if (!o) {
      if (!r) return;
      outbox.push((o = { cid, text: r.text }));
    }
    const n = (tries.get(cid) || 0) + 1;
    tries.set(cid, n);
    if (n > 6) {
      outbox.splice(outbox.indexOf(o), 1);
      if (r && !r.id) { r.status = 'unsent'; o.unsent = true; outbox.push(o); draw(r); }
      return showError(TXT.generic);
    }
    o.wait = true;
    setTimeout(() => { o.wait = false; o.sent = 0; flush(); }, Math.min(30000, 1000 * 2 ** n) * (0.75 + Math.random() / 2));
  };

  const endReplay = () => {
    clearTimeout(syncT);
    if (!replaying) return;
    replaying = false;
    if (readyTarget > synced && readyTarget !== Infinity) synced = readyTarget;
    for (const s of seen) if (s <= synced) seen.delete(s);
    while (seen.delete(synced + 1)) synced++;
    flush();
    save();
  };
  const onFrame = (raw) => {
    let f;
    try { f = JSON.parse(raw); } catch { return; }
    if (!f || typeof f !== 'object') return;
    clearTimeout(pongT);
    switch (f.type) {
      case 'ready':
        ready = replaying = everOnline = true;
        attempt = 0;
        dead = false;
        readyTarget = Number.isInteger(f.last_seq) ? f.last_seq : Infinity;
        setConn('online');
        if (f.conversation) applyStatus(f.conversation.status);
        // its pong marks the end of the replay
        sendFrame({ type: 'ping' });
        syncT = setTimeout(endReplay, 5000);
        clearInterval(pingT);
        pingT = setInterval(ping, 25000);
        break;
      case 'pong':
        endReplay();
        break;
      case 'message': {
        const m = f.message || {};
        const live = !(m.seq <= readyTarget);
        if (upsert(m) && live && (m.role === 'assistant' || m.role === 'agent')) {
          unread(m.id);
          showError('');
        }
        saw(m.seq);
        save();
        break;
      }
      case 'delta':
        onDelta(f);
        break;
      case 'done':
        upsert(f.message);
        if (f.message) { saw(f.message.seq); unread(f.message.id); }
        save();
        break;
      case 'withdrawn': {
        const r = byId.get(String(f.message_id));
        if (r) { r.status = 'withdrawn'; r.text = ''; draw(r); busy(); save(); }
        break;
      }
      case 'status':
        saw(f.seq);
        if (!(f.seq <= readyTarget)) applyStatus(f.status);
        save();
        break;
      case 'typing':
        setTyping(f.on === true, f.role);
        break;
      case 'error':
        onError(f);
        break;
    }
  };
  const onError = (f) => {
    const c = f.code, cid = typeof f.client_id === 'string' ? f.client_id : null;
    const n = Math.max(1, Math.ceil(+f.retry_after) || 5);
    showError({
      rate_limited: `You're sending messages too fast. Please wait ${n} second${n === 1 ? '' : 's'}.`,
      too_long: TXT.tooLong,
      bad_request: cid && "Sorry, that message couldn't be sent.",
      conversation_closed: 'This conversation is closed. Start a new conversation to keep chatting.',
      reply_failed: "Sorry, the assistant couldn't finish that answer. Please try again.",
      unavailable: cid && "We couldn't send that just now. We'll retry.",
    }[c] || TXT.generic);
    if (c === 'conversation_closed') applyStatus('closed');
    if (!cid || c === 'reply_failed') return;
    if (c === 'unavailable') retryLater(cid);
    else reject(cid);
  };

  const ping = () => {
    if (!ready) return;
    sendFrame({ type: 'ping' });
    clearTimeout(pongT);
    pongT = setTimeout(() => lost(gen, 1006), 10000);
  };
  const later = (fn) => {
    clearTimeout(retryT);
    setConn('offline');
    const d = Math.min(15000, 500 * 2 ** attempt++);
    retryT = setTimeout(fn, d * (0.75 + Math.random() / 2));
  };
  const connect = () => {
    clearTimeout(retryT);
    if (ws || !conv.id) return;
    const g = ++gen;
    if (connState !== 'online' && !everOnline && !attempt) setConn('connecting');
    let s;
    try { s = new WebSocket(WS_BASE + conv.ws); } catch { return later(connect); }
    ws = s;
    s.onopen = () => g === gen && s.send(JSON.stringify({ type: 'hello', token: token || '', last_seq: safeSeq() }));
    s.onmessage = (e) => g === gen && onFrame(e.data);
    s.onclose = (e) => lost(g, e.code);
  };
  const teardown = () => {
    const s = ws;
    ws = null;
    gen++;
    ready = replaying = false;
    s.onopen = s.onmessage = s.onclose = null;
    try { s.close(); } catch { /* closed */ }
    clearInterval(pingT);
    clearTimeout(pongT);
    clearTimeout(syncT);
    setTyping(false);
  };
  function lost(g, code) {
    if (g !== gen || !ws) return;
    teardown();
    setConn('offline');
    // 4401: refused; start a new conversation with the same token
    if (code === 4401) return attempt ? later(create) : create();
    later(connect);
  }
  const reset = (c, st) => {
    for (const el of [...ui.log.children]) if (!el.classList.contains('sb-greeting')) el.remove();
    byId.clear();
    byCid.clear();
    synced = 0;
    seen.clear();
    readyTarget = Infinity;
    conv = c;
    for (const o of outbox) addPending(o);
    applyStatus(st in NOTICE ? st : 'bot', true);
    setTyping(false);
    saveNow();
  };
  async function create() {
    if (creating) return;
    creating = true;
    clearTimeout(retryT);
    if (!everOnline && !attempt) setConn('connecting');
    let r = null, j = null;
    try {
      r = await fetch(BASE + 'api/v1/conversations', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(token ? { site_key: siteKey, visitor_token: token } : { site_key: siteKey }),
        credentials: 'omit',
      });
      if (r.status === 201) j = await r.json();
    } catch { /* network */ }
    creating = false;
    const c = j && j.conversation;
    if (c && typeof c.id === 'string' && /^\/[\w/.-]*$/.test(j.websocket_url)) {
      if (typeof j.visitor_token === 'string') store.set('token', (token = j.visitor_token));
      if (ws) teardown();
      reset({ id: c.id, ws: j.websocket_url }, c.status);
      return connect();
    }
    if (r && (r.status === 400 || r.status === 403)) {
      fail(`site key ${siteKey} is unknown or not allowed on this origin.`);
      dead = true;
      setConn('offline');
      return showError("Chat isn't available on this page right now.");
    }
    if (r && r.status === 429) {
      showError('Too many conversations were started from here. Please try again in a few minutes.');
      setConn('offline');
      retryT = setTimeout(create, Math.min(3600, +r.headers.get('Retry-After') || 60) * 1000);
      return;
    }
    later(create);
  }
  const kick = () => {
    if (D.visibilityState === 'hidden' || ws || creating || dead) return;
    attempt = 0;
    if (conv.id) connect();
    else if (outbox.length) create();
  };

  function setOpen(v) {
    v = !!v;
    if (!ui) { wantOpen = v; return; }
    if (v === isOpen()) return;
    ui.panel.hidden = !v;
    ui.launcher.setAttribute('aria-expanded', v);
    ui.wrap.classList.toggle('sb-open', v);
    if (v) {
      unread();
      if (!conv.id && !creating && !ws && !dead) create();
      pinned = true;
      ui.body.scrollTop = ui.body.scrollHeight;
      (ui.input.disabled ? ui.newBtn : ui.input).focus({ preventScroll: true });
    } else if (ui.root.activeElement) {
      ui.launcher.focus({ preventScroll: true });
    }
  }
  const grow = () => {
    const el = ui.input;
    el.style.height = '';
    el.style.height = Math.min(120, Math.max(40, el.scrollHeight + 2)) + 'px';
  };

  const build = (cfg) => {
    const host = h('div', { id: 'supportbot-widget' });
    // The host spans the visual viewport and its transform contains the fixed boxes
    host.style.cssText = 'all:initial;position:fixed;top:0;left:0;display:block;z-index:2147483000;pointer-events:none;zoom:1'
      .replace(/;|$/g, '!important;');
    const css = (k, v) => host.style.setProperty(k, v, 'important');
    const vv = W.visualViewport;
    const fit = () => {
      const de = D.documentElement, w = vv ? vv.width : de.clientWidth, hh = vv ? vv.height : de.clientHeight;
      css('width', w + 'px');
      css('height', hh + 'px');
      css('transform', vv ? `translate(${vv.offsetLeft}px,${vv.offsetTop}px)` : 'none');
      if (ui.wrap) ui.wrap.classList.toggle('sb-narrow', w < 520);
    };
    const root = host.attachShadow({ mode: 'open' });
    try {
      const sheet = new CSSStyleSheet();
      sheet.replaceSync(CSS);
      root.adoptedStyleSheets = [sheet];
    } catch {
      root.append(h('style', { text: CSS }));
    }

    const title = str(cfg.title, 60).trim() || 'Support';
    const u = (ui = { root, host });
    u.badge = h('span', { class: 'sb-badge', 'aria-hidden': 'true', hidden: true });
    u.launcher = h('button', {
      type: 'button', class: 'sb-launcher', 'aria-label': 'Open chat', 'aria-expanded': 'false',
      'aria-controls': 'sb-panel', onclick: () => setOpen(!isOpen()),
    }, [icon('M21 11.5a8.4 8.4 0 0 1-12.3 7.5L3 21l2-5.6A8.4 8.4 0 1 1 21 11.5z', 'sb-i-chat'), icon('M6 9l6 6 6-6', 'sb-i-close'), u.badge]);
    u.sub = h('div', { class: 'sb-sub' });
    u.greeting = cfg.greeting
      ? h('div', { class: 'sb-message sb-greeting', 'data-role': 'system', 'data-status': 'complete' }, [h('div', { class: 'sb-text' })])
      : null;
    if (u.greeting) markdown(str(cfg.greeting, 1000), u.greeting.firstChild);
    u.log = h('div', { class: 'sb-messages', role: 'log', 'aria-live': 'polite', 'aria-label': 'Messages' }, u.greeting ? [u.greeting] : []);
    u.typingText = h('span', { class: 'sb-sr' });
    u.typing = h('div', { class: 'sb-typing', hidden: true }, [h('i'), h('i'), h('i'), u.typingText]);
    u.body = h('div', { class: 'sb-body' }, [u.log, u.typing]);
    u.notice = h('div', { class: 'sb-notice', role: 'status', hidden: true });
    u.error = h('div', { class: 'sb-error', role: 'alert', hidden: true });
    u.input = h('textarea', {
      class: 'sb-input', 'aria-label': 'Message', placeholder: 'Write a message…', rows: '1',
      oninput: () => { grow(); typed(); },
      onkeydown: (e) => {
        if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
          e.preventDefault();
          submit();
        }
      },
    });
    u.send = h('button', { type: 'button', class: 'sb-send', 'aria-label': 'Send', onclick: submit }, [icon('M12 19V5M5 12l7-7 7 7')]);
    u.composer = h('div', { class: 'sb-composer' }, [u.input, u.send]);
    u.handoff = h('button', {
      type: 'button', class: 'sb-handoff', text: 'Talk to a person',
      onclick: () => {
        if (status !== 'bot') return;
        wantHandoff = true;
        u.handoff.disabled = true;
        if (conv.id) flush();
        else create();
      },
    });
    u.newBtn = h('button', {
      type: 'button', class: 'sb-new', text: 'Start a new conversation', hidden: true,
      onclick: () => { u.newBtn.disabled = true; showError(''); create().finally(() => { u.newBtn.disabled = false; }); },
    });
    u.panel = h('div', {
      id: 'sb-panel', class: 'sb-panel', role: 'dialog', 'aria-label': title, hidden: true, 'data-connection': 'connecting',
    }, [
      h('div', { class: 'sb-header' }, [
        h('div', { class: 'sb-avatar', 'aria-hidden': 'true', text: [...title][0].toUpperCase() }),
        h('div', { class: 'sb-head' }, [h('h2', { class: 'sb-title', text: title }), u.sub]),
        h('button', { type: 'button', class: 'sb-close', 'aria-label': 'Close chat', onclick: () => { setOpen(false); u.launcher.focus(); } }, [icon('M6 6l12 12M18 6L6 18')]),
      ]),
      u.body, u.notice, u.error, u.composer,
      h('div', { class: 'sb-footer' }, [u.handoff, u.newBtn]),
    ]);
    u.wrap = h('div', { class: 'sb-root' }, [u.launcher, u.panel]);
    const colour = str(cfg.colour);
    if (/^#[0-9a-f]{3,6}$/i.test(colour) && colour.length % 3 === 1) {
      const hex = colour.length === 4 ? colour.replace(/[0-9a-f]/gi, '$&$&') : colour;
      const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.substr(i, 2), 16));
      u.wrap.style.setProperty('--sb-accent', hex);
      u.wrap.style.setProperty('--sb-on', r * 0.299 + g * 0.587 + b * 0.114 > 160 ? '#111827' : '#fff');
    }
    root.append(u.wrap);
    fit();
    (vv || W).addEventListener('resize', fit);
    if (vv) vv.addEventListener('scroll', fit);

    u.wrap.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && isOpen()) {
        e.preventDefault();
        setOpen(false);
        u.launcher.focus();
      }
      e.stopPropagation();
    });
    for (const t of ['keyup', 'keypress']) u.wrap.addEventListener(t, (e) => e.stopPropagation());
    u.body.addEventListener('scroll', () => { pinned = u.body.scrollHeight - u.body.scrollTop - u.body.clientHeight < 48; }, { passive: true });
    if (W.ResizeObserver) {
      const ro = new ResizeObserver(() => { if (pinned) u.body.scrollTop = u.body.scrollHeight; });
      ro.observe(u.log);
      ro.observe(u.body);
    }

    D.body.append(host);
    // re-attach if the page swaps <body>
    new MutationObserver(() => { if (!host.isConnected && D.body) D.body.append(host); })
      .observe(D.documentElement, { childList: true });

    for (const m of Array.isArray(conv.messages) ? conv.messages : []) upsert(m);
    for (const o of outbox) if (!byCid.has(o.cid)) addPending(o);
    applyStatus(conv.status in NOTICE ? conv.status : 'bot', true);
    setConn('connecting');
    if (conv.id) connect();
    else if (outbox.some((o) => !o.unsent)) create();

    W.addEventListener('online', kick);
    W.addEventListener('pageshow', kick);
    D.addEventListener('visibilitychange', kick);
    W.addEventListener('pagehide', saveNow);

    api.ready = true;
    if (wantOpen) { wantOpen = false; setOpen(true); }
    W.dispatchEvent(new CustomEvent('supportbot:ready', { detail: { siteKey } }));
  };

  const start = async () => {
    let cfg = {};
    try {
      const signal = AbortSignal.timeout && AbortSignal.timeout(8000);
      const r = await fetch(`${BASE}api/v1/sites/${encodeURIComponent(siteKey)}/widget`, { credentials: 'omit', signal });
      if (r.status === 403 || r.status === 404) return fail(`site key ${siteKey} is unknown or not allowed on this origin.`);
      if (r.ok) cfg = await r.json();
    } catch { /* defaults */ }
    build(cfg && typeof cfg === 'object' ? cfg : {});
  };
  if (D.body) start();
  else D.addEventListener('DOMContentLoaded', start);
})();
