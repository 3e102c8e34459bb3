/*! supportbot agent console: plain JS, no build step. Protocol: docs/agent-console.md. */
(() => {
  'use strict';

  const D = document, W = window;
  const $ = (sel, root) => (root || D).querySelector(sel);
  const readJson = (id, fallback) => {
    try { return JSON.parse(D.getElementById(id).textContent); } catch { return fallback; }
  };
  const ME = { name: readJson('ac-agent-name', ''), id: readJson('ac-agent-id', null), canAnswer: readJson('ac-can-answer', false) === true };

  const MAX_CHARS = 4000;
  const UUID_RE = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;
  const STATUS_LABEL = { bot: 'Assistant', waiting: 'Waiting', agent: 'Agent', closed: 'Closed' };
  const STATUS_CHANGE_LABEL = {
    bot: 'The assistant answers', waiting: 'Waiting for a person', agent: 'A person answers', closed: 'Closed',
  };
  const ROLE_LABEL = { visitor: 'Visitor', assistant: 'Assistant', agent: 'Agent', system: 'System' };
  const ROLES = Object.keys(ROLE_LABEL);
  const STATES = ['complete', 'streaming', 'failed', 'withdrawn'];
  const ERROR_TEXT = {
    bad_request: 'The server did not understand that request.',
    not_found: 'There is no conversation with that id.',
    already_taken: 'Another agent has this conversation.',
    not_yours: 'This conversation is not yours to answer; take it over first.',
    forbidden: 'You may read conversations but not answer them.',
    conversation_closed: 'This conversation is closed.',
    too_long: 'That is too long (4,000 characters at most).',
    unavailable: 'The server failed to do that; try again.',
  };
  const FAILED_LABEL = {
    taken_over: 'stopped: a person took over',
    worker_lost: 'failed: the worker was lost',
  };

  // Elements get text only through textContent: everything a visitor, a model or an
  // agent wrote stays text, never markup.
  const h = (tag, attrs, kids) => {
    const el = D.createElement(tag);
    for (const k in attrs || {}) {
      const v = attrs[k];
      if (v == null || v === false) continue;
      if (k === 'text') el.textContent = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : v);
    }
    if (kids) el.append(...kids.filter((c) => c != null));
    return el;
  };
  const str = (v, n) => (typeof v === 'string' ? v.slice(0, n || 1e5) : '');
  const uuid = () => {
    try { return crypto.randomUUID(); } catch { /* not a secure context */ }
    return 'a-' + [...crypto.getRandomValues(new Uint8Array(16))].map((v) => (v + 256).toString(16).slice(1)).join('');
  };
  const when = (iso) => {
    const t = Date.parse(iso);
    return Number.isFinite(t) ? t : null;
  };
  const clock = (iso) => {
    const t = when(iso);
    if (t == null) return '';
    const d = new Date(t);
    const sameDay = d.toDateString() === new Date().toDateString();
    return sameDay
      ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
      : d.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
  };
  const age = (iso) => {
    const t = when(iso);
    if (t == null) return '';
    const s = Math.max(0, Math.round((Date.now() - t) / 1000));
    if (s < 60) return 'just now';
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 86400) return `${Math.floor(s / 3600)} h`;
    return `${Math.floor(s / 86400)} d`;
  };
  const timeEl = (iso, cls) => h('time', { class: cls || 'ac-time', datetime: str(iso, 40) || null, title: iso ? new Date(when(iso) || 0).toLocaleString() : null, text: clock(iso) });

  // --- Page elements ------------------------------------------------------------

  const ui = {
    connection: $('.ac-connection'),
    alert: $('.ac-alert'),
    alertText: $('.ac-alert-text'),
    openForm: $('.ac-open-form'),
    openInput: $('.ac-open-input'),
    queue: $('.ac-queue'),
    queueCount: $('.ac-queue-count'),
    queueEmpty: $('.ac-queue-empty'),
    thread: $('.ac-thread'),
    threadEmpty: $('.ac-thread-empty'),
    threadBody: $('.ac-thread-body'),
    site: $('.ac-thread-site'),
    status: $('.ac-thread-status'),
    priority: $('.ac-thread-priority'),
    facts: $('.ac-thread-facts'),
    takeOver: $('.ac-take-over'),
    handBack: $('.ac-hand-back'),
    close: $('.ac-close'),
    holder: $('.ac-holder'),
    timeline: $('.ac-timeline'),
    typing: $('.ac-typing'),
    botTyping: $('.ac-bot-typing'),
    input: $('textarea.ac-input'),
    send: $('.ac-send'),
    noteInput: $('textarea.ac-note-input'),
    noteSend: $('.ac-note-send'),
  };

  // --- State ---------------------------------------------------------------------

  const queue = new Map(); // conversation id -> queue item
  let openId = null; // the conversation the agent has open (re-opened on reconnect)
  let thread = null; // what the console shows of it, once its `thread` frame came
  let pending = []; // agent replies sent, not yet echoed: {cid, text, el, sent}
  let ws = null, gen = 0, attempt = 0, online = false, forbidden = false;
  let retryT, pingT, pongT, refreshT, typingT, botTypingT, alertT;

  // --- Alert and connection state ------------------------------------------------

  const showAlert = (text, sticky) => {
    clearTimeout(alertT);
    ui.alertText.textContent = text || '';
    ui.alert.hidden = !text;
    // Errors stay until read; a later success or dismissal clears them.
    if (text && !sticky) alertT = setTimeout(() => showAlert(''), 15000);
  };
  $('.ac-alert-dismiss').addEventListener('click', () => showAlert(''));

  const CONNECTION_TEXT = { connecting: 'Connecting…', online: 'Live', offline: 'Reconnecting…', forbidden: 'No access' };
  const setConnection = (state) => {
    ui.connection.setAttribute('data-state', state);
    ui.connection.textContent = CONNECTION_TEXT[state] || state;
    online = state === 'online';
  };

  // --- The websocket ---------------------------------------------------------------

  const sendFrame = (frame) => {
    if (!ws || ws.readyState !== WebSocket.OPEN || !online) return false;
    try { ws.send(JSON.stringify(frame)); return true; } catch { return false; }
  };
  const sendOrWarn = (frame) => {
    if (sendFrame(frame)) return true;
    showAlert('Not connected to the server; reconnecting. Try again in a moment.');
    return false;
  };

  const connect = () => {
    clearTimeout(retryT);
    if (ws || forbidden) return;
    const g = ++gen;
    let s;
    try {
      s = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws/v1/agent/');
    } catch {
      return later();
    }
    ws = s;
    if (!attempt) setConnection('connecting');
    s.onmessage = (e) => { if (g === gen) onFrame(e.data); };
    s.onclose = (e) => lost(g, e.code);
  };
  const teardown = () => {
    const s = ws;
    ws = null;
    gen++;
    online = false;
    clearInterval(pingT);
    clearTimeout(pongT);
    if (s) {
      s.onmessage = s.onclose = null;
      try { s.close(); } catch { /* closed */ }
    }
    setTyping(false);
    setBotTyping(false);
  };
  const later = () => {
    clearTimeout(retryT);
    setConnection('offline');
    const delay = Math.min(15000, 500 * 2 ** attempt++);
    retryT = setTimeout(connect, delay * (0.75 + Math.random() / 2));
  };
  function lost(g, code) {
    if (g !== gen || !ws) return;
    teardown();
    if (code === 4403) {
      // Refused for this account: retrying cannot help.
      forbidden = true;
      setConnection('forbidden');
      showAlert('Your account may not use the agent console. Ask an administrator for access.', true);
      updateControls();
      return;
    }
    later();
    updateControls();
  }
  const ping = () => {
    if (!sendFrame({ type: 'ping' })) return;
    clearTimeout(pongT);
    pongT = setTimeout(() => lost(gen, 1006), 10000);
  };
  const kick = () => {
    if (ws || forbidden || D.visibilityState === 'hidden') return;
    attempt = 0;
    connect();
  };
  W.addEventListener('online', kick);
  D.addEventListener('visibilitychange', kick);

  const onFrame = (raw) => {
    let f;
    try { f = JSON.parse(raw); } catch { return; }
    if (!f || typeof f !== 'object') return;
    clearTimeout(pongT);
    switch (f.type) {
      case 'queue':
        if (Array.isArray(f.items)) onQueueSnapshot(f);
        else if (f.action === 'note') onNote(f.note);
        else onQueueChange(f);
        break;
      case 'thread':
        onThread(f);
        break;
      case 'event':
        if (thread && f.conversation_id === thread.id && f.event && typeof f.event === 'object') onEvent(f.event);
        break;
      case 'taken':
        onTaken(f);
        break;
      case 'sent':
        // A resent reply the server had already stored: its event came before.
        settlePending(null);
        break;
      case 'error':
        onError(f);
        break;
      case 'pong':
        break;
    }
  };

  // The first frame on every connection: the socket is ready for commands.
  const onQueueSnapshot = (f) => {
    if (Number.isInteger(f.me)) ME.id = f.me;
    if (!online) {
      attempt = 0;
      setConnection('online');
      clearInterval(pingT);
      pingT = setInterval(ping, 25000);
      if (openId) sendFrame({ type: 'open', conversation_id: openId });
      updateControls();
    }
    queue.clear();
    for (const item of f.items) if (item && typeof item.id === 'string') queue.set(item.id, item);
    renderQueue();
  };

  const onError = (f) => {
    const code = str(f.code, 40);
    const detail = str(f.detail, 300);
    if (code === 'not_found' && openId && (!thread || thread.id !== openId)) {
      openId = thread ? thread.id : null;
      markSelected();
    }
    if (code === 'already_taken' || code === 'not_yours' || code === 'conversation_closed' || code === 'forbidden') {
      // Whatever was in flight for this conversation did not happen.
      failPending();
      ui.takeOver.removeAttribute('data-busy');
      if (openId) scheduleRefresh(0);
    }
    // The server may or may not have stored a reply it failed on; the same
    // client_id makes a later resend safe either way.
    if (code === 'unavailable' && pending.length) setTimeout(resendPending, 2000, true);
    showAlert(detail || ERROR_TEXT[code] || 'Something went wrong.');
    updateControls();
  };

  // --- The queue ---------------------------------------------------------------------

  const onQueueChange = (f) => {
    const c = f.conversation;
    if (!c || typeof c.id !== 'string') return;
    const item = { ...c, ticket: f.ticket && typeof f.ticket === 'object' ? f.ticket : null };
    if (item.status === 'bot' || item.status === 'closed') queue.delete(item.id);
    else queue.set(item.id, item);
    renderQueue();
    if (thread && thread.id === item.id) {
      thread.conversation = { ...thread.conversation, ...c };
      thread.ticket = item.ticket;
      renderHead();
      updateControls();
    }
  };

  const priorityOf = (item) => (item.ticket && Number.isInteger(item.ticket.priority) ? item.ticket.priority : 0);
  // As the server orders its first frame: waiting first, most urgent, newest.
  const queueOrder = (a, b) =>
    (a.status !== 'waiting') - (b.status !== 'waiting') ||
    priorityOf(b) - priorityOf(a) ||
    (when(b.updated_at) || 0) - (when(a.updated_at) || 0);

  const priorityBadge = (ticket, cls) => {
    if (!ticket || !Number.isInteger(ticket.priority)) return null;
    const label = str(ticket.priority_label, 30) || `Priority ${ticket.priority}`;
    return h('span', {
      class: `ac-priority ${cls || ''}`.trim(), 'data-priority': ticket.priority,
      title: `Priority: ${label}`, text: ticket.priority >= 4 ? `⚠ ${label}` : label,
    });
  };

  const renderQueue = () => {
    const items = [...queue.values()].sort(queueOrder);
    const waiting = items.filter((i) => i.status === 'waiting').length;
    ui.queueCount.textContent = items.length ? `(${waiting} waiting, ${items.length} in all)` : '';
    ui.queueEmpty.hidden = items.length > 0;
    D.title = waiting ? `(${waiting}) Support console` : 'Support console';
    const els = items.map((item) => {
      const t = item.ticket || {};
      const reason = str(t.reason, 200) || str(item.handoff_reason, 200);
      const subject = str(t.subject, 200);
      const agent = str(item.assigned_agent, 150);
      const urgent = priorityOf(item) >= 4;
      const open = h('button', {
        type: 'button', class: 'ac-queue-open',
        onclick: () => openConversation(item.id),
        'aria-label': `${str(item.site_name, 200) || 'Conversation'}, ${STATUS_LABEL[item.status] || item.status}${reason ? ', ' + reason : ''}`,
      }, [
        h('span', { class: 'ac-qi-top' }, [
          h('span', { class: 'ac-qi-site', text: str(item.site_name, 200) || 'Unknown site' }),
          h('span', { class: 'ac-pill', 'data-status': str(item.status, 20), text: STATUS_LABEL[item.status] || str(item.status, 20) }),
        ]),
        reason ? h('span', { class: 'ac-qi-reason', text: reason }) : null,
        subject ? h('span', { class: 'ac-qi-subject', text: subject }) : null,
        h('span', { class: 'ac-qi-bottom' }, [
          priorityBadge(item.ticket),
          item.moderation_flagged ? h('span', { class: 'ac-flag-badge', text: 'Flagged' }) : null,
          h('span', { class: 'ac-qi-agent', text: agent ? `Agent: ${agent}` : 'Unassigned' }),
          h('time', { class: 'ac-age', datetime: str(item.updated_at, 40), 'data-since': str(item.updated_at, 40), title: `Updated ${new Date(when(item.updated_at) || 0).toLocaleString()}`, text: age(item.updated_at) }),
        ]),
      ]);
      return h('li', {
        class: 'ac-queue-item' + (urgent ? ' ac-urgent' : ''),
        'data-conversation-id': item.id, 'data-status': str(item.status, 20),
        'aria-current': item.id === openId ? 'true' : null,
      }, [open]);
    });
    ui.queue.replaceChildren(...els);
  };
  const markSelected = () => {
    for (const li of ui.queue.children) {
      if (li.getAttribute('data-conversation-id') === openId) li.setAttribute('aria-current', 'true');
      else li.removeAttribute('aria-current');
    }
  };
  // Ages move on without any event.
  setInterval(() => {
    for (const t of D.querySelectorAll('.ac-age[data-since]')) t.textContent = age(t.getAttribute('data-since'));
  }, 30000);

  // --- Opening a conversation ------------------------------------------------------------

  const openConversation = (id) => {
    if (!UUID_RE.test(id)) { showAlert('That is not a conversation id.'); return; }
    id = id.toLowerCase();
    if (id.length === 32) id = id.replace(/^(.{8})(.{4})(.{4})(.{4})(.{12})$/, '$1-$2-$3-$4-$5');
    if (id !== openId) {
      stopTyping();
      openId = id;
      markSelected();
      try { history.replaceState(null, '', '#' + id); } catch { /* sandboxed */ }
    }
    if (!sendFrame({ type: 'open', conversation_id: id }) && !ws) kick();
  };
  ui.openForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const id = ui.openInput.value.trim();
    if (!id) return;
    openConversation(id);
    ui.openInput.value = '';
  });

  // After a change whose details (who, why, the withheld text) only the staff view
  // carries, ask for the thread again; it replaces what the live events built.
  const scheduleRefresh = (delay) => {
    clearTimeout(refreshT);
    refreshT = setTimeout(() => { if (openId) sendFrame({ type: 'open', conversation_id: openId }); }, delay == null ? 250 : delay);
  };

  const onThread = (f) => {
    const c = f.conversation;
    if (!c || typeof c.id !== 'string' || c.id !== openId) return;
    const same = thread && thread.id === c.id;
    const scroll = !same || isPinned();
    if (!same) {
      for (const p of pending) p.el.remove();
      pending = [];
      ui.timeline.replaceChildren();
      ui.input.value = '';
      setTyping(false);
      setBotTyping(false);
      thread = { id: c.id, els: new Map() };
    }
    thread.conversation = c;
    thread.ticket = f.ticket && typeof f.ticket === 'object' ? f.ticket : null;
    thread.messages = new Map();
    thread.changes = new Map();
    thread.notes = new Map();
    for (const m of Array.isArray(f.messages) ? f.messages : []) upsertMessage(m, true);
    for (const s of Array.isArray(f.status_changes) ? f.status_changes : []) addChange(s);
    for (const n of Array.isArray(f.notes) ? f.notes : []) addNote(n);
    // Elements of rows that no longer exist (none in practice) go away.
    for (const [key, el] of thread.els) {
      if (!thread.messages.has(key) && !thread.changes.has(key) && !thread.notes.has(key)) {
        el.remove();
        thread.els.delete(key);
      }
    }
    ui.thread.setAttribute('data-conversation-id', c.id);
    ui.threadEmpty.hidden = true;
    ui.threadBody.hidden = false;
    renderHead();
    updateControls();
    layout(scroll);
    resendPending(false);
  };

  // Replies sent on a socket that went down (or that the server failed on): the same
  // client_id makes a resend harmless (stored once; a repeat is answered with `sent`).
  function resendPending(all) {
    if (!thread) return;
    for (const p of pending) {
      if (p.sent === gen && !all) continue;
      if ((p.tries = (p.tries || 0) + 1) > 4) {
        failPending();
        showAlert('Your reply could not be sent; it is back in the box. Try again.');
        return;
      }
      p.sent = gen;
      sendFrame({ type: 'message', conversation_id: thread.id, text: p.text, client_id: p.cid });
    }
  }

  const renderHead = () => {
    const c = thread.conversation, t = thread.ticket;
    const status = str(c.status, 20);
    ui.thread.setAttribute('data-status', status);
    ui.site.textContent = str(c.site_name, 200) || 'Conversation';
    ui.status.textContent = STATUS_LABEL[status] || status;
    ui.status.setAttribute('data-status', status);
    const badge = priorityBadge(t);
    ui.priority.hidden = !badge;
    if (badge) {
      ui.priority.textContent = badge.textContent;
      ui.priority.setAttribute('data-priority', badge.getAttribute('data-priority'));
      ui.priority.title = badge.title;
    }
    const facts = [
      ['Assigned', str(c.assigned_agent, 150) || 'Nobody'],
      t && ['Ticket', `#${t.id} · ${str(t.status, 20)}${t.subject ? ' · ' + str(t.subject, 200) : ''}`],
      (t && t.reason) || c.handoff_reason ? ['Reason', str((t && t.reason) || c.handoff_reason, 200)] : null,
      c.moderation_flagged ? ['Moderation', 'A message was flagged'] : null,
      ['Started', clock(c.created_at)],
      ['Id', c.id],
    ].filter(Boolean);
    ui.facts.replaceChildren(...facts.flatMap(([k, v]) => [h('dt', { text: k }), h('dd', { text: v })]));
  };

  // --- The timeline ------------------------------------------------------------------

  const upsertMessage = (m, staff) => {
    if (!m || (typeof m.id !== 'string' && typeof m.id !== 'number')) return null;
    const key = 'm' + m.id;
    const status = STATES.includes(m.status) ? m.status : 'complete';
    let r = thread.messages.get(key);
    // A late "started" event must not undo a reply that has already finished.
    if (r && !staff && r.status !== 'streaming' && status === 'streaming') return r;
    r = r || { key };
    Object.assign(r, {
      id: String(m.id),
      seq: Number.isInteger(m.seq) ? m.seq : r.seq,
      role: ROLES.includes(m.role) ? m.role : 'system',
      status,
      created_at: str(m.created_at, 40) || r.created_at,
    });
    // Live events carry the visitor's view of a message: a withdrawn answer comes
    // as "", so keep the text staff have already seen until the refresh brings it.
    if (staff || status !== 'withdrawn' || typeof r.text !== 'string') r.text = str(m.text);
    if (staff) {
      r.moderation = str(m.moderation, 20);
      r.categories = Array.isArray(m.moderation_categories) ? m.moderation_categories : [];
      r.errorCode = str(m.error_code, 40);
      r.author = str(m.author, 150);
      r.handoffReason = str(m.handoff_reason, 200);
    } else if (r.role === 'agent' && !r.author) {
      r.author = str(thread.conversation.assigned_agent, 150);
    }
    if (status === 'streaming') r.next = Number.isInteger(m.next_index) ? m.next_index : (r.text ? null : 0);
    thread.messages.set(key, r);
    drawMessage(r);
    return r;
  };

  const drawMessage = (r) => {
    let el = thread.els.get(r.key);
    if (!el) {
      r.tx = h('div', { class: 'ac-text' });
      el = h('article', { class: 'ac-message' }, [h('div', { class: 'ac-meta' }), r.tx]);
      thread.els.set(r.key, el);
    }
    r.tx = el.querySelector('.ac-text');
    el.setAttribute('data-role', r.role);
    el.setAttribute('data-status', r.status);
    el.setAttribute('data-message-id', r.id);
    const who = r.role === 'agent' && r.author ? `${r.author} (agent)` : ROLE_LABEL[r.role];
    const meta = [h('span', { class: 'ac-who', text: who }), timeEl(r.created_at)];
    if (r.status === 'streaming') meta.push(h('span', { class: 'ac-tag ac-tag-streaming', text: 'writing…' }));
    if (r.status === 'failed') meta.push(h('span', { class: 'ac-tag ac-tag-failed', text: FAILED_LABEL[r.errorCode] || (r.errorCode ? `failed: ${r.errorCode}` : 'failed') }));
    if (r.status === 'withdrawn') meta.push(h('span', { class: 'ac-tag ac-tag-withdrawn', text: 'withdrawn (not shown to the visitor)' }));
    if (r.moderation === 'flagged') {
      const cats = r.categories.map((c) => (typeof c === 'string' ? c : JSON.stringify(c))).join(', ');
      meta.push(h('span', { class: 'ac-tag ac-tag-flagged', text: cats ? `flagged: ${cats}` : 'flagged' }));
    }
    if (r.handoffReason && r.role !== 'system') meta.push(h('span', { class: 'ac-tag', text: `handoff: ${r.handoffReason}` }));
    el.firstChild.replaceChildren(...meta);
    r.tx.textContent = r.text;
  };

  const addChange = (s) => {
    if (!s || !Number.isInteger(s.seq)) return;
    const key = 's' + s.seq;
    const r = { key, seq: s.seq, status: str(s.status, 20), reason: str(s.reason, 200), actor: str(s.actor, 150), created_at: str(s.created_at, 40) };
    thread.changes.set(key, r);
    let el = thread.els.get(key);
    if (!el) thread.els.set(key, (el = h('div', { class: 'ac-status-change', role: 'note' })));
    el.setAttribute('data-status', r.status);
    const why = r.reason ? ` — ${r.reason}` : '';
    const by = r.actor && !r.reason.includes(r.actor) ? ` (by ${r.actor})` : '';
    el.replaceChildren(
      h('span', { class: 'ac-status-text', text: `${STATUS_CHANGE_LABEL[r.status] || r.status}${why}${by}` }),
      timeEl(r.created_at),
    );
  };

  const addNote = (n) => {
    if (!n || (typeof n.id !== 'number' && typeof n.id !== 'string')) return;
    const key = 'n' + n.id;
    thread.notes.set(key, { key, created_at: str(n.created_at, 40) });
    let el = thread.els.get(key);
    if (!el) thread.els.set(key, (el = h('aside', { class: 'ac-note', 'data-note-id': String(n.id) })));
    el.replaceChildren(
      h('div', { class: 'ac-meta' }, [
        h('span', { class: 'ac-tag ac-tag-internal', text: 'internal' }),
        h('span', { class: 'ac-who', text: str(n.author, 150) || 'Staff' }),
        timeEl(n.created_at),
      ]),
      h('div', { class: 'ac-note-text', text: str(n.text) }),
    );
  };

  const onNote = (n) => {
    if (!thread || !n || n.conversation_id !== thread.id) return;
    const pinned = isPinned();
    addNote(n);
    layout(pinned);
  };

  const isPinned = () => {
    const t = ui.timeline;
    return t.scrollHeight - t.scrollTop - t.clientHeight < 60;
  };
  // Messages and status changes by seq; each note after what came before it.
  const layout = (scroll) => {
    const bySeq = [...thread.messages.values(), ...thread.changes.values()].sort((a, b) => a.seq - b.seq);
    const notes = [...thread.notes.values()].sort((a, b) => (when(a.created_at) || 0) - (when(b.created_at) || 0));
    const order = [];
    let i = 0;
    for (const r of bySeq) {
      const t = when(r.created_at);
      while (i < notes.length && t != null && (when(notes[i].created_at) || 0) < t) order.push(notes[i++]);
      order.push(r);
    }
    while (i < notes.length) order.push(notes[i++]);
    const want = order.map((r) => thread.els.get(r.key)).concat(pending.map((p) => p.el));
    let cur = ui.timeline.firstChild;
    for (const el of want) {
      if (cur === el) cur = cur.nextSibling;
      else ui.timeline.insertBefore(el, cur);
    }
    while (cur) { const next = cur.nextSibling; cur.remove(); cur = next; }
    if (scroll) ui.timeline.scrollTop = ui.timeline.scrollHeight;
  };

  const onEvent = (e) => {
    const pinned = isPinned();
    switch (e.type) {
      case 'message': {
        const r = upsertMessage(e.message, false);
        if (r && r.role === 'agent') settlePending(r.text);
        if (r && r.role === 'visitor') setTyping(false);
        if (r && (r.status === 'withdrawn' || r.status === 'failed')) scheduleRefresh();
        break;
      }
      case 'delta': {
        const r = thread.messages.get('m' + e.message_id);
        if (!r || r.status !== 'streaming' || !Number.isInteger(e.index) || typeof e.text !== 'string') return;
        if (r.next != null && e.index < r.next) return; // already in the snapshot
        r.text += e.text; // after a gap, `done` brings the stored text
        r.next = e.index + 1;
        r.tx.textContent = r.text;
        break;
      }
      case 'done': {
        const r = upsertMessage(e.message, false);
        if (r && r.status !== 'complete') scheduleRefresh(); // error code, withheld text
        break;
      }
      case 'withdrawn': {
        const r = thread.messages.get('m' + e.message_id);
        if (r) { r.status = 'withdrawn'; drawMessage(r); }
        scheduleRefresh();
        break;
      }
      case 'status': {
        if (typeof e.status !== 'string') return;
        thread.conversation = { ...thread.conversation, status: e.status };
        // Shown at once; the refresh adds who did it and why.
        if (Number.isInteger(e.seq) && !thread.changes.has('s' + e.seq)) {
          addChange({ seq: e.seq, status: e.status, created_at: new Date().toISOString() });
        }
        renderHead();
        updateControls();
        scheduleRefresh();
        break;
      }
      case 'typing':
        if (e.role === 'visitor') setTyping(e.on === true);
        else if (e.role === 'assistant') setBotTyping(e.on === true);
        return;
      default:
        return;
    }
    layout(pinned);
  };

  // The visitor's widget repeats `on` every few seconds while typing and sends `off`
  // after a pause; a page closed mid-word sends nothing, so the indicator expires.
  function setTyping(on) {
    clearTimeout(typingT);
    ui.typing.hidden = !on;
    if (on) typingT = setTimeout(() => setTyping(false), 10000);
  }
  function setBotTyping(on) {
    clearTimeout(botTypingT);
    ui.botTyping.hidden = !on;
    if (on) botTypingT = setTimeout(() => setBotTyping(false), 120000);
  }

  // --- Who may do what -------------------------------------------------------------------

  const mine = () => !!thread && thread.conversation.status === 'agent' && thread.conversation.assigned_agent_id === ME.id;

  function updateControls() {
    if (!thread) return;
    const c = thread.conversation, status = c.status, own = mine();
    const canAnswer = ME.canAnswer && !forbidden;
    ui.takeOver.hidden = !(status === 'bot' || status === 'waiting');
    ui.takeOver.disabled = !canAnswer || ui.takeOver.hasAttribute('data-busy');
    ui.handBack.disabled = !canAnswer || !(own || status === 'waiting');
    ui.close.disabled = !canAnswer || status === 'closed' || (status === 'agent' && !own);
    ui.input.disabled = ui.send.disabled = !canAnswer || !own;
    ui.noteInput.disabled = ui.noteSend.disabled = !canAnswer;
    const holder = str(c.assigned_agent, 150);
    const held = status === 'agent' && !own;
    ui.holder.hidden = !held;
    ui.holder.textContent = held ? `${holder || 'Another agent'} has this conversation.` : '';
    ui.input.placeholder = !ME.canAnswer
      ? 'You may read conversations but not answer them.'
      : own ? 'Write a reply (Enter sends, Shift+Enter for a new line)'
        : status === 'closed' ? 'This conversation is closed.'
          : held ? `${holder || 'Another agent'} has this conversation.`
            : 'Take over the conversation to reply.';
    if (!own) stopTyping();
  }

  // --- Commands ------------------------------------------------------------------------------

  const onTaken = (f) => {
    ui.takeOver.removeAttribute('data-busy');
    if (!thread || f.conversation_id !== thread.id) return;
    // The row is already ours; the status event that confirms it may come later.
    thread.conversation = { ...thread.conversation, status: 'agent', assigned_agent_id: ME.id, assigned_agent: ME.name };
    showAlert('');
    renderHead();
    updateControls();
    ui.input.focus();
  };

  ui.takeOver.addEventListener('click', () => {
    if (!thread) return;
    if (sendOrWarn({ type: 'take_over', conversation_id: thread.id })) {
      ui.takeOver.setAttribute('data-busy', '');
      ui.takeOver.disabled = true;
      // Never stuck: an answer that got lost with the socket frees the button.
      setTimeout(() => { ui.takeOver.removeAttribute('data-busy'); updateControls(); }, 8000);
    }
  });
  ui.handBack.addEventListener('click', () => {
    if (!thread) return;
    stopTyping();
    sendOrWarn({ type: 'hand_back', conversation_id: thread.id });
  });
  ui.close.addEventListener('click', () => {
    if (!thread) return;
    stopTyping();
    sendOrWarn({ type: 'close', conversation_id: thread.id });
  });

  const submit = () => {
    if (!thread || ui.send.disabled) return;
    const text = ui.input.value.trim();
    if (!text) return;
    if ([...text].length > MAX_CHARS) { showAlert(ERROR_TEXT.too_long); return; }
    const p = { cid: uuid(), text, sent: 0 };
    stopTyping();
    if (!sendOrWarn({ type: 'message', conversation_id: thread.id, text, client_id: p.cid })) return;
    p.sent = gen;
    p.el = h('article', { class: 'ac-message ac-pending', 'data-role': 'agent', 'data-status': 'pending' }, [
      h('div', { class: 'ac-meta' }, [h('span', { class: 'ac-who', text: `${ME.name} (agent)` }), h('span', { class: 'ac-tag', text: 'sending…' })]),
      h('div', { class: 'ac-text', text }),
    ]);
    pending.push(p);
    ui.input.value = '';
    showAlert('');
    layout(true);
  };
  // The echo of a reply (or `sent` for a repeat) settles the oldest matching one.
  function settlePending(text) {
    const i = pending.findIndex((p) => text == null || p.text === text);
    if (i < 0) return;
    pending[i].el.remove();
    pending.splice(i, 1);
  }
  // Refused replies go back into the composer, so nothing typed is lost.
  function failPending() {
    if (!pending.length) return;
    const texts = pending.map((p) => p.text);
    for (const p of pending) p.el.remove();
    pending = [];
    if (!ui.input.value.trim()) ui.input.value = texts.join('\n\n');
  }

  ui.input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      submit();
    }
  });
  ui.send.addEventListener('click', submit);

  // Tell the visitor an agent is typing: once when typing starts, again every few
  // seconds while it goes on, and off after a pause or on send (as the widget does).
  let typingOn = false, typingAt = 0, idleT;
  const typingFrame = (on) => {
    if (!thread || (on === typingOn && (!on || Date.now() - typingAt < 3000))) return;
    if (sendFrame({ type: 'typing', conversation_id: thread.id, on })) { typingOn = on; typingAt = Date.now(); }
  };
  function stopTyping() {
    clearTimeout(idleT);
    if (typingOn) typingFrame(false);
    typingOn = false;
  }
  ui.input.addEventListener('input', () => {
    if (!mine()) return;
    typingFrame(ui.input.value.trim() !== '');
    clearTimeout(idleT);
    idleT = setTimeout(() => typingFrame(false), 4000);
  });

  const addNoteFromBox = () => {
    if (!thread || ui.noteSend.disabled) return;
    const text = ui.noteInput.value.trim();
    if (!text) return;
    if ([...text].length > MAX_CHARS) { showAlert('Notes are at most 4,000 characters.'); return; }
    if (sendOrWarn({ type: 'note', conversation_id: thread.id, text })) ui.noteInput.value = '';
  };
  ui.noteSend.addEventListener('click', addNoteFromBox);
  ui.noteInput.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); addNoteFromBox(); }
  });

  // --- Start ----------------------------------------------------------------------------------

  if (!ME.canAnswer) {
    for (const el of [ui.takeOver, ui.handBack, ui.close, ui.input, ui.send, ui.noteInput, ui.noteSend]) el.disabled = true;
  }
  const fromHash = location.hash.slice(1);
  if (UUID_RE.test(fromHash)) openConversation(fromHash);
  renderQueue();
  connect();
})();
