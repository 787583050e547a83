// The customer's seat: the page this computer's coflow node serves on loopback.
//
// Rules this file keeps (the server's Content-Security-Policy enforces some of them): no inline
// script or style, no HTML parsing of anything a peer wrote. Peer text reaches the page only
// through textContent / text nodes, never innerHTML, never an href or src. Forms live in
// containers that are built once per page and never replaced, so a live update never takes
// what the user is typing; only the lists around them are rebuilt.
'use strict';

(function () {
  // ---------------------------------------------------------------- DOM

  /** Makes an element. `attrs`: class, for, text, on<event> (a listener), else an attribute. */
  function h(tag, attrs) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const k of Object.keys(attrs)) {
        const v = attrs[k];
        if (v === null || v === undefined || v === false) continue;
        if (k === 'class') el.className = v;
        else if (k === 'for') el.htmlFor = v;
        else if (k === 'text') el.textContent = v;
        else if (k.length > 2 && k.startsWith('on') && typeof v === 'function') {
          el.addEventListener(k.slice(2), v);
        } else if (v === true) el.setAttribute(k, '');
        else el.setAttribute(k, String(v));
      }
    }
    for (let i = 2; i < arguments.length; i++) add(el, arguments[i]);
    return el;
  }

  function add(el, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) {
      for (const c of child) add(el, c);
    } else if (typeof child === 'string' || typeof child === 'number') {
      el.appendChild(document.createTextNode(String(child)));
    } else {
      el.appendChild(child);
    }
  }

  /** Rebuilds a container's children, keeping keyboard focus on the "same" control. */
  function renderInto(container, nodes) {
    const active = document.activeElement;
    const key = active && container.contains(active) && active.dataset ? active.dataset.key : null;
    container.replaceChildren();
    add(container, nodes);
    if (key) {
      for (const el of container.querySelectorAll('[data-key]')) {
        if (el.dataset.key === key) {
          el.focus();
          break;
        }
      }
    }
  }

  let uid = 0;
  /** A labelled field: returns { wrap, input }. */
  function field(label, input, hint) {
    if (!input.id) input.id = 'f' + ++uid;
    const wrap = h('div', { class: 'field' }, h('label', { for: input.id }, label));
    if (hint) {
      const hintEl = h('p', { class: 'hint', id: input.id + '-hint' }, hint);
      input.setAttribute('aria-describedby', hintEl.id);
      wrap.appendChild(hintEl);
    }
    wrap.appendChild(input);
    return { wrap, input };
  }

  function checkbox(label, id) {
    const input = h('input', { type: 'checkbox', id });
    return { wrap: h('div', { class: 'check' }, input, h('label', { for: id }, label)), input };
  }

  function select(id, options) {
    const s = h('select', { id });
    setOptions(s, options);
    return s;
  }

  /** Replaces a select's options, keeping its value if it is still among them. */
  function setOptions(sel, options) {
    const before = sel.value;
    const same =
      sel.options.length === options.length &&
      options.every((o, i) => sel.options[i].value === o[0] && sel.options[i].text === o[1]);
    if (same) return;
    sel.replaceChildren();
    for (const [value, label] of options) {
      const o = document.createElement('option');
      o.value = value;
      o.textContent = label;
      sel.appendChild(o);
    }
    if (options.some((o) => o[0] === before)) sel.value = before;
  }

  function when(at) {
    if (typeof at !== 'number') return '';
    const d = new Date(at * 1000);
    try {
      return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
    } catch (_) {
      return d.toLocaleString();
    }
  }

  function timeEl(at) {
    if (typeof at !== 'number') return null;
    return h('time', { datetime: new Date(at * 1000).toISOString() }, when(at));
  }

  function oneLine(s) {
    return String(s).replace(/\s+/g, ' ').trim();
  }

  const ID = /^[0-9A-Za-z_-]{1,128}$/;
  function flowHref(id) {
    return ID.test(id) ? '/flow/' + id : null;
  }

  function navLink(href, label, cls) {
    return h('a', { href, 'data-nav': true, class: cls }, label);
  }

  // ---------------------------------------------------------------- alert

  const alertEl = () => document.getElementById('alert');

  function showError(e) {
    const msg = e instanceof Error ? e.message : String(e);
    const el = alertEl();
    el.textContent = oneLine(msg) || 'Something went wrong.';
    el.hidden = false;
  }

  function clearError() {
    const el = alertEl();
    el.textContent = '';
    el.hidden = true;
  }

  // ---------------------------------------------------------------- the node's API

  class LoginNeeded extends Error {}

  const LOST = 'The node does not answer. Is coflow still running on this computer?';

  // A login makes a session: an HttpOnly cookie, and a key that comes with the login's answer
  // (a <meta> element of this page) and that this page keeps in its own origin's storage
  // (other ports of 127.0.0.1 see the cookie, never the key). Every call sends the key.
  const KEY = 'coflow-key';
  let memoryKey = '';

  function storedKey() {
    try {
      return localStorage.getItem(KEY) || '';
    } catch (_) {
      return '';
    }
  }

  function storeKey(key) {
    memoryKey = key;
    try {
      if (key) localStorage.setItem(KEY, key);
      else localStorage.removeItem(KEY);
    } catch (_) {
      /* storage refused: the key lives as long as this page */
    }
  }

  const currentKey = () => storedKey() || memoryKey;

  /** Right after a login: keep its key, and take the login's address out of the address bar. */
  function takeLoginKey() {
    const m = document.querySelector('meta[name="coflow-key"]');
    if (!m) return;
    storeKey(m.getAttribute('content') || '');
    m.remove();
    history.replaceState(null, '', '/');
  }

  async function call(body) {
    let r;
    try {
      r = await fetch('/v1/call', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-Coflow-Key': currentKey() },
        body: JSON.stringify(body),
        credentials: 'same-origin',
        cache: 'no-store',
      });
    } catch (_) {
      throw new Error(LOST);
    }
    if (r.status === 401) {
      showLogin();
      throw new LoginNeeded('not logged in');
    }
    let data = null;
    try {
      data = await r.json();
    } catch (_) {
      data = null;
    }
    if (!r.ok) {
      const msg = data && typeof data.error === 'string' ? data.error : 'The node answered ' + r.status + '.';
      throw new Error(msg);
    }
    return data;
  }

  /** The payload of an externally tagged Reply: `{"Flow": {...}}` → `{...}`. */
  function reply(data, kind) {
    if (data === kind) return kind;
    if (data && typeof data === 'object' && Object.prototype.hasOwnProperty.call(data, kind)) {
      return data[kind];
    }
    throw new Error('The node gave an unexpected answer.');
  }

  const edit = (flow, e) => call({ call: 'edit', flow, edit: e });

  /** Runs an action: errors go to the alert (the form keeps what was typed). */
  async function act(button, fn) {
    if (button) button.disabled = true;
    clearError();
    try {
      await fn();
      return true;
    } catch (e) {
      if (!(e instanceof LoginNeeded)) showError(e);
      return false;
    } finally {
      if (button) button.disabled = false;
    }
  }

  function run(promise) {
    Promise.resolve(promise).catch((e) => {
      if (!(e instanceof LoginNeeded)) showError(e);
    });
  }

  // ---------------------------------------------------------------- app state and routing

  const state = { status: null, loggedOut: false, page: null };

  function root() {
    return document.getElementById('app');
  }

  function showLogin() {
    if (state.loggedOut) return;
    state.loggedOut = true;
    state.page = null;
    stopEvents();
    document.getElementById('top').hidden = true;
    clearError();
    renderInto(root(), [
      h(
        'p',
        { class: 'login', id: 'login-needed' },
        'This page needs its login link: run ',
        h('code', null, 'coflow open'),
        ' on this computer.'
      ),
    ]);
  }

  function showMe() {
    const me = document.getElementById('me');
    me.textContent = state.status && state.status.name ? state.status.name : '';
  }

  function route() {
    if (state.loggedOut) return;
    const path = location.pathname;
    let page;
    if (state.status && state.status.setup) page = setupPage();
    else if (path === '/join') page = joinPage();
    else if (path.startsWith('/flow/') && path.length > 6) page = flowPage(safeDecode(path.slice(6)));
    else page = flowsPage();
    state.page = page;
    document.title = page.title ? page.title + ' · coflow' : 'coflow';
    clearError();
    const main = root();
    main.replaceChildren();
    page.mount(main);
    run(page.refresh());
  }

  function safeDecode(s) {
    try {
      return decodeURIComponent(s);
    } catch (_) {
      return s;
    }
  }

  function go(path) {
    history.pushState(null, '', path);
    route();
    window.scrollTo(0, 0);
    const h1 = root().querySelector('h1');
    if (h1) {
      h1.setAttribute('tabindex', '-1');
      h1.focus();
    }
  }

  document.addEventListener('click', (e) => {
    const a = e.target instanceof Element ? e.target.closest('a[data-nav]') : null;
    if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    go(a.getAttribute('href'));
  });
  window.addEventListener('popstate', route);

  // ---------------------------------------------------------------- live updates

  let events = null;
  let opened = false;
  let refreshTimer = null;
  let retryTimer = null;

  function scheduleRefresh(flow) {
    const page = state.page;
    if (!page || state.loggedOut) return;
    if (flow && page.flow && page.flow !== flow) return;
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => {
      if (state.page === page) run(page.refresh());
    }, 100);
  }

  function startEvents() {
    stopEvents();
    if (state.loggedOut) return;
    // An EventSource sends no headers: the key goes in the query (same origin, no referrer).
    const es = new EventSource('/v1/events?key=' + encodeURIComponent(currentKey()));
    events = es;
    es.addEventListener('flow', (e) => {
      let flow = null;
      try {
        flow = JSON.parse(e.data).flow;
      } catch (_) {
        flow = null;
      }
      scheduleRefresh(typeof flow === 'string' ? flow : null);
    });
    es.addEventListener('flows', () => scheduleRefresh(null));
    es.onmessage = () => scheduleRefresh(null);
    es.onopen = () => {
      // Back after a break: say so, and fetch what may have changed unseen.
      if (opened) {
        if (alertEl().textContent === LOST) clearError();
        scheduleRefresh(null);
      }
      opened = true;
    };
    es.onerror = () => {
      if (events !== es) return;
      // CONNECTING: the browser tries again by itself; CLOSED (a refusal such as 401): it
      // does not. Either way a status call tells whether the node is gone or wants a login.
      const closed = es.readyState === EventSource.CLOSED;
      if (closed) events = null;
      call({ call: 'status' }).then(
        () => {
          if (closed) retryTimer = setTimeout(startEvents, 2000);
        },
        (e) => {
          if (e instanceof LoginNeeded) return;
          showError(e);
          if (closed) retryTimer = setTimeout(startEvents, 5000);
        }
      );
    };
  }

  function stopEvents() {
    clearTimeout(retryTimer);
    if (events) events.close();
    events = null;
  }

  // ---------------------------------------------------------------- first run

  function setupPage() {
    return {
      mount(main) {
        const name = h('input', { type: 'text', id: 'setup-name', autocomplete: 'name', maxlength: 200 });
        const start = h('button', { type: 'submit', id: 'setup-start' }, 'Start');
        const note = h('p', { class: 'quiet', role: 'status' });
        const form = h('form', { class: 'card', id: 'setup-form' }, field('Your name', name).wrap, h('div', { class: 'actions' }, start), note);
        form.addEventListener('submit', (e) => {
          e.preventDefault();
          const value = name.value.trim();
          if (!value) {
            showError('Please write your name.');
            name.focus();
            return;
          }
          run(
            act(start, async () => {
              note.textContent = 'Starting your node…';
              try {
                await call({ call: 'init', name: value });
                state.status = await settled();
              } finally {
                note.textContent = '';
              }
              showMe();
              route();
              startEvents();
            })
          );
        });
        main.append(
          h('h1', null, 'Welcome'),
          h('p', null, 'This page belongs to coflow on this computer. Your name is what the others in your flows will see.'),
          form
        );
        name.focus();
      },
      async refresh() {},
    };
  }

  /** Waits until the node has left setup mode; returns its status. */
  async function settled() {
    const deadline = Date.now() + 60000;
    for (;;) {
      try {
        const st = reply(await call({ call: 'status' }), 'Status');
        if (!st.setup) return st;
      } catch (e) {
        if (e instanceof LoginNeeded || Date.now() > deadline) throw e;
      }
      if (Date.now() > deadline) throw new Error('The node did not finish starting.');
      await new Promise((r) => setTimeout(r, 300));
    }
  }

  // ---------------------------------------------------------------- join

  function joinPage() {
    return {
      title: 'Join a flow',
      mount(main) {
        const ticket = h('textarea', {
          id: 'join-ticket',
          rows: 4,
          spellcheck: 'false',
          autocomplete: 'off',
          autocapitalize: 'off',
        });
        let fromLink = location.hash.replace(/^#/, '');
        try {
          fromLink = decodeURIComponent(fromLink);
        } catch (_) {
          /* keep it as it is */
        }
        ticket.value = fromLink.trim();
        const join = h('button', { type: 'submit', id: 'join-button' }, 'Join');
        const note = h('p', { class: 'quiet', role: 'status', id: 'join-status' });
        const form = h(
          'form',
          { class: 'card', id: 'join-form' },
          field('Ticket', ticket, 'The ticket someone sent you: it starts with coflow1.').wrap,
          h('div', { class: 'actions' }, join),
          note
        );
        const page = this;
        form.addEventListener('submit', (e) => {
          e.preventDefault();
          const t = ticket.value.trim();
          if (!t) {
            showError('Paste the ticket you were sent.');
            ticket.focus();
            return;
          }
          clearError();
          join.disabled = true;
          join.textContent = 'Joining…';
          note.textContent = 'Joining… this can take a minute.';
          call({ call: 'join', ticket: t }).then(
            (data) => {
              const id = reply(data, 'Joined').id;
              if (state.page === page) {
                const href = flowHref(id);
                go(href || '/');
              }
            },
            (err) => {
              join.disabled = false;
              join.textContent = 'Join';
              note.textContent = '';
              if (!(err instanceof LoginNeeded)) showError(err);
            }
          );
        });
        main.append(
          h('p', null, navLink('/', 'All flows', 'back')),
          h('h1', null, 'Join a flow'),
          form
        );
        if (!ticket.value) ticket.focus();
        else join.focus();
      },
      async refresh() {},
    };
  }

  // ---------------------------------------------------------------- the flows

  function waitingList(items, cls) {
    if (!Array.isArray(items) || items.length === 0) return null;
    return h(
      'ul',
      { class: cls || 'waiting' },
      items.map((w) => h('li', { class: 'wait-item', 'data-kind': w.kind }, String(w.text)))
    );
  }

  const STATUS = { open: 'open', fulfilled: 'fulfilled', closed: 'closed' };

  function flowsPage() {
    let lists;
    const page = {
      seq: 0,
      mount(main) {
        lists = h('div', { id: 'flow-lists' }, h('p', { class: 'quiet' }, 'Loading…'));
        main.append(
          h('h1', null, 'Your flows'),
          h('p', { class: 'join-link' }, navLink('/join', 'Join a flow')),
          lists,
          newFlowForm()
        );
      },
      async refresh() {
        const seq = ++page.seq;
        const flows = reply(await call({ call: 'flow_list' }), 'Flows');
        if (seq !== page.seq || state.page !== page) return;
        renderLists(flows);
        lists.dataset.loaded = 'true';
      },
    };

    function renderLists(flows) {
      const newest = (a, b) => (b.updated_at || 0) - (a.updated_at || 0);
      const offered = flows.filter((f) => f.pending).sort(newest);
      const waiting = flows.filter((f) => !f.pending && Array.isArray(f.waiting) && f.waiting.length).sort(newest);
      const others = flows.filter((f) => !f.pending && !(Array.isArray(f.waiting) && f.waiting.length)).sort(newest);
      const out = [];
      if (waiting.length) {
        out.push(
          h('section', { id: 'waiting-flows', 'aria-labelledby': 'waiting-h' },
            h('h2', { id: 'waiting-h' }, 'Waiting on you'),
            h('ul', { class: 'flows' }, waiting.map((f) => flowItem(f, true))))
        );
      }
      if (offered.length) {
        out.push(
          h('section', { id: 'offered-flows', 'aria-labelledby': 'offered-h' },
            h('h2', { id: 'offered-h' }, 'Offered to you'),
            h('ul', { class: 'flows' }, offered.map(offerItem)))
        );
      }
      if (others.length) {
        out.push(
          h('section', { id: 'other-flows', 'aria-labelledby': 'others-h' },
            h('h2', { id: 'others-h' }, waiting.length || offered.length ? 'Other flows' : 'Flows'),
            h('ul', { class: 'flows' }, others.map((f) => flowItem(f, false))))
        );
      }
      if (!out.length) {
        out.push(h('p', { class: 'quiet' }, 'No flows yet. Join one with the ticket you were sent, or start one below.'));
      }
      renderInto(lists, out);
    }

    function flowItem(f, withWaiting) {
      const href = flowHref(f.id);
      const title = f.title ? String(f.title) : '(untitled)';
      return h(
        'li',
        { class: 'flow-item card', 'data-flow': f.id },
        h('div', { class: 'row' },
          href ? h('a', { href, 'data-nav': true, class: 'flow-title', 'data-key': 'open-' + f.id }, title) : h('span', { class: 'flow-title' }, title),
          h('span', { class: 'badge status-' + (STATUS[f.status] || 'other') }, String(f.status || ''))),
        withWaiting ? waitingList(f.waiting) : null
      );
    }

    function offerItem(f) {
      const o = f.offer || {};
      const by = o.by_name ? String(o.by_name) : 'A member';
      const role = o.role ? ' as ' + o.role : '';
      const accept = h('button', { type: 'button', 'data-key': 'accept-' + f.id }, 'Accept');
      const decline = h('button', { type: 'button', class: 'secondary', 'data-key': 'decline-' + f.id }, 'Decline');
      accept.addEventListener('click', () =>
        run(act(accept, async () => {
          reply(await call({ call: 'flow_accept', flow: f.id }), 'Accepted');
          await page.refresh();
        })));
      decline.addEventListener('click', () =>
        run(act(decline, async () => {
          reply(await call({ call: 'flow_decline', flow: f.id }), 'Declined');
          await page.refresh();
        })));
      return h(
        'li',
        { class: 'flow-item card', 'data-flow': f.id },
        h('div', { class: 'flow-title' }, f.title ? String(f.title) : '(untitled)'),
        h('p', { class: 'meta' }, by + (o.by_role ? ' (' + o.by_role + ')' : '') + ' added you' + role + '.'),
        h('div', { class: 'actions' }, accept, decline)
      );
    }

    function newFlowForm() {
      const title = h('input', { type: 'text', id: 'new-title', maxlength: 500 });
      const need = h('textarea', { id: 'new-need', rows: 3 });
      const role = select('new-role', [['owner', 'the one who fulfils it (owner)'], ['customer', 'the customer']]);
      const start = h('button', { type: 'submit', id: 'new-start' }, 'Start flow');
      const form = h(
        'form',
        { id: 'new-flow' },
        field('Title', title).wrap,
        field('Need', need, 'What the customer needs, in their words.').wrap,
        field('You are', role).wrap,
        h('div', { class: 'actions' }, start)
      );
      form.addEventListener('submit', (e) => {
        e.preventDefault();
        run(act(start, async () => {
          const created = reply(
            await call({ call: 'flow_new', title: title.value.trim(), need: need.value.trim(), role: role.value }),
            'Created'
          );
          title.value = '';
          need.value = '';
          go(flowHref(created.id) || '/');
        }));
      });
      return h('details', { class: 'card new-flow' }, h('summary', null, 'New flow'), form);
    }

    return page;
  }

  // ---------------------------------------------------------------- one flow

  const STEP_MOVES = {
    todo: ['active', 'waiting', 'done', 'skipped'],
    active: ['waiting', 'done', 'skipped'],
    waiting: ['active', 'done', 'skipped'],
    done: ['todo'],
    skipped: ['todo'],
  };
  const MOVE_LABEL = { active: 'Start', waiting: 'Wait', done: 'Done', skipped: 'Skip', todo: 'Reopen' };
  const STEP_STATUS = { todo: 'to do', active: 'in progress', waiting: 'waiting', done: 'done', skipped: 'skipped' };

  function flowPage(id) {
    const el = {};
    let view = null;
    const page = { seq: 0, flow: id };

    page.mount = function (main) {
      el.title = h('h1', { id: 'flow-title' }, '…');
      el.need = h('p', { class: 'need', id: 'flow-need' });
      el.status = h('p', { class: 'meta', id: 'flow-status' });
      el.top = h('div', { id: 'flow-top' });
      el.waiting = h('section', { id: 'waiting-on-me', 'aria-labelledby': 'wom-h', hidden: true });
      el.steps = h('ol', { class: 'steps', id: 'steps' });
      el.decisions = h('div', { id: 'decisions' });
      el.comments = h('ol', { class: 'comments', id: 'comments' });
      el.members = h('ul', { class: 'members', id: 'members' });

      el.stepForm = stepForm();
      el.decisionForm = decisionForm();
      el.inviteForm = inviteForm();
      el.commentForm = commentForm();

      main.append(
        h('p', null, navLink('/', 'All flows', 'back')),
        h('header', { class: 'flow-head' }, el.title, h('p', { class: 'need-label' }, 'The need'), el.need, el.status),
        el.top,
        el.waiting,
        h('section', { 'aria-labelledby': 'steps-h' }, h('h2', { id: 'steps-h' }, 'Steps'), el.steps, el.stepForm.form),
        h('section', { 'aria-labelledby': 'decisions-h' }, h('h2', { id: 'decisions-h' }, 'Decisions'), el.decisions, el.decisionForm.form),
        h('section', { 'aria-labelledby': 'comments-h' }, h('h2', { id: 'comments-h' }, 'Comments'), el.comments, el.commentForm.form),
        h('section', { 'aria-labelledby': 'members-h' }, h('h2', { id: 'members-h' }, 'People'), el.members, el.inviteForm.form)
      );
    };

    page.refresh = async function () {
      const seq = ++page.seq;
      let v;
      try {
        v = reply(await call({ call: 'flow_show', flow: id }), 'Flow');
      } catch (e) {
        // Never shown (a wrong address, a declined flow): say so instead of an empty page.
        if (!view && !(e instanceof LoginNeeded) && state.page === page && e.message !== LOST) {
          page.missing = true;
          const main = root();
          main.replaceChildren(
            h('p', null, navLink('/', 'All flows', 'back')),
            h('h1', null, 'No such flow here'),
            h('p', { class: 'quiet' }, 'This computer holds no flow at this address.')
          );
        }
        throw e;
      }
      if (seq !== page.seq || state.page !== page) return;
      if (page.missing) {
        // It arrived after all: build its page afresh.
        route();
        return;
      }
      view = v;
      render();
      el.title.dataset.loaded = 'true';
    };

    const nameOf = (node) => {
      const m = view && view.members.find((x) => x.node_id === node);
      const n = m && m.name ? String(m.name) : '…' + String(node).slice(-6);
      return node === view.me ? n + ' (you)' : n;
    };
    const myRole = () => (view ? view.my_role || null : null);
    const isOpen = () => view && view.status === 'open';
    const editsWork = () => ['owner', 'contributor'].includes(myRole()) && isOpen();
    const manages = () => ['owner', 'customer'].includes(myRole());

    async function doEdit(button, e) {
      return act(button, async () => {
        reply(await edit(id, e), 'Edited');
        await page.refresh();
      });
    }

    function render() {
      el.title.textContent = String(view.title || '(untitled)');
      document.title = String(view.title || 'Flow') + ' · coflow';
      el.need.textContent = String(view.need || '');
      const role = myRole();
      el.status.textContent =
        'Status: ' + String(view.status) + (role ? ' · you are the ' + role : '');
      renderTop();
      renderWaiting();
      renderSteps();
      renderDecisions();
      renderComments();
      renderMembers();
      el.stepForm.update();
      el.decisionForm.update();
      el.inviteForm.update();
      el.commentForm.update();
    }

    function renderTop() {
      const out = [];
      if (view.offer) {
        const o = view.offer;
        const accept = h('button', { type: 'button', 'data-key': 'accept' }, 'Accept');
        const decline = h('button', { type: 'button', class: 'secondary', 'data-key': 'decline' }, 'Decline');
        accept.addEventListener('click', () =>
          run(act(accept, async () => {
            reply(await call({ call: 'flow_accept', flow: id }), 'Accepted');
            await page.refresh();
          })));
        decline.addEventListener('click', () =>
          run(act(decline, async () => {
            reply(await call({ call: 'flow_decline', flow: id }), 'Declined');
            go('/');
          })));
        out.push(h('div', { class: 'notice' },
          h('p', null, (o.by_name ? String(o.by_name) : 'A member') + ' added you to this flow' + (o.role ? ' as ' + o.role : '') + '. Take part?'),
          h('div', { class: 'actions' }, accept, decline)));
      }
      if (view.removed_here) {
        out.push(h('p', { class: 'notice' }, 'You were removed from this flow. This is its history up to then.'));
      }
      if (myRole() === 'customer') {
        if (isOpen()) {
          const confirm = h('button', { type: 'button', id: 'confirm-fulfilled', 'data-key': 'fulfil' }, 'Confirm fulfilled');
          confirm.addEventListener('click', () => run(doEdit(confirm, { op: 'set_status', status: 'fulfilled' })));
          out.push(h('div', { class: 'customer-actions' },
            h('p', { class: 'hint' }, 'When your need is met, confirm it here.'), confirm));
        } else if (view.status === 'fulfilled') {
          out.push(h('p', { class: 'notice done', id: 'fulfilled-note' }, 'You confirmed this need fulfilled.'));
        }
      } else if (view.status === 'fulfilled') {
        out.push(h('p', { class: 'notice done', id: 'fulfilled-note' }, 'The customer confirmed this need fulfilled.'));
      }
      renderInto(el.top, out);
    }

    function renderWaiting() {
      const items = Array.isArray(view.waiting_on_me) ? view.waiting_on_me : [];
      el.waiting.hidden = items.length === 0;
      renderInto(el.waiting, [h('h2', { id: 'wom-h' }, 'Waiting on you'), waitingList(items)]);
    }

    function waitsOn(s) {
      if (s.status === 'done' || s.status === 'skipped') return [];
      const who = [];
      const name = (node) => (node === view.me ? 'you' : nameOf(node));
      if (s.assignee) who.push(name(s.assignee));
      if (s.customer_involved) {
        const customers = view.members.filter((m) => m.role === 'customer' && !m.removed);
        if (customers.length) {
          for (const c of customers) {
            if (c.node_id !== s.assignee) who.push(c.node_id === view.me ? 'you' : name(c.node_id) + ' (the customer)');
          }
        } else {
          who.push('the customer');
        }
      }
      return who;
    }

    function renderSteps() {
      if (!view.steps.length) {
        renderInto(el.steps, h('li', { class: 'quiet empty' }, 'No steps yet.'));
        return;
      }
      renderInto(el.steps, view.steps.map((s) => {
        const meta = [];
        meta.push(s.assignee ? 'Assigned to ' + nameOf(s.assignee) : 'Not assigned');
        if (s.due) meta.push('due ' + String(s.due));
        const who = waitsOn(s);
        const mine = !s.assignee || s.assignee === view.me;
        const canMove = editsWork() && (myRole() === 'owner' || mine);
        let actions = null;
        if (canMove) {
          actions = h('div', { class: 'actions small' }, (STEP_MOVES[s.status] || []).map((to) => {
            const b = h('button', {
              type: 'button',
              class: 'secondary step-move',
              'data-key': 'step-' + s.id + '-' + to,
              'data-move': to,
              'aria-label': MOVE_LABEL[to] + ': ' + String(s.title),
            }, MOVE_LABEL[to]);
            b.addEventListener('click', () => run(doEdit(b, { op: 'set_step_status', step: s.id, status: to })));
            return b;
          }));
        }
        return h('li', { class: 'step card', 'data-step': s.id, 'data-status': s.status },
          h('div', { class: 'row' },
            h('span', { class: 'step-title' }, String(s.title)),
            h('span', { class: 'badge step-' + s.status }, STEP_STATUS[s.status] || String(s.status))),
          s.detail ? h('p', { class: 'detail' }, String(s.detail)) : null,
          h('p', { class: 'meta' }, meta.join(' · ')),
          who.length ? h('p', { class: 'meta waits-on' }, 'Waits on ' + who.join(' and ')) : null,
          actions);
      }));
    }

    function mayChoose(d) {
      const r = myRole();
      if (!r || d.closed || !isOpen()) return false;
      return d.who === 'customer' ? r === 'customer' : r !== 'observer';
    }

    function renderDecisions() {
      if (!view.decisions.length) {
        renderInto(el.decisions, h('p', { class: 'quiet' }, 'No decisions yet.'));
        return;
      }
      renderInto(el.decisions, view.decisions.map((d) => {
        const mine = d.choices ? d.choices[view.me] : undefined;
        const votes = {};
        for (const t of d.tally || []) votes[t.option] = t.votes;
        const vote = d.mode === 'vote';
        const who =
          d.who === 'customer'
            ? (vote ? 'The customer votes' : 'The customer decides')
            : (vote ? 'The members vote' : 'Any member decides');
        const count = (o) => (vote ? ' · ' + (votes[o] || 0) + (votes[o] === 1 ? ' vote' : ' votes') : '');
        let options;
        if (mayChoose(d)) {
          options = h('div', { class: 'options', role: 'group', 'aria-label': String(d.question) }, d.options.map((o) => {
            const chosen = mine === o;
            const b = h('button', {
              type: 'button',
              class: 'option' + (chosen ? ' chosen' : ''),
              'aria-pressed': chosen ? 'true' : 'false',
              'data-key': 'choose-' + d.id + '-' + o,
              'data-option': o,
            }, h('span', { class: 'option-label' }, String(o)),
            chosen ? [' ', h('span', { class: 'your-choice' }, 'your choice')] : null,
            vote ? h('span', { class: 'tally' }, count(o).replace(' · ', '')) : null);
            b.addEventListener('click', () => run(doEdit(b, { op: 'choose', decision: d.id, option: o })));
            return b;
          }));
        } else {
          options = h('ul', { class: 'option-list' }, d.options.map((o) =>
            h('li', { class: o === d.outcome ? 'outcome-option' : null, 'data-option': o },
              String(o), mine === o ? [' ', h('span', { class: 'your-choice' }, 'your choice')] : null, count(o))));
        }
        let outcome = null;
        if (d.outcome) outcome = h('p', { class: 'outcome' }, 'Decided: ' + String(d.outcome));
        else if (d.closed) outcome = h('p', { class: 'outcome' }, 'Closed without an outcome.');
        let close = null;
        if (vote && !d.closed && manages() && isOpen()) {
          close = h('button', { type: 'button', class: 'secondary', 'data-key': 'close-' + d.id }, 'Close vote');
          close.addEventListener('click', () => run(doEdit(close, { op: 'close_decision', decision: d.id })));
        }
        return h('div', { class: 'decision card', 'data-decision': d.id, 'data-closed': d.closed ? 'true' : 'false' },
          h('h3', null, String(d.question)),
          h('p', { class: 'meta' }, who + (d.closed ? ' · closed' : '')),
          options,
          outcome,
          close ? h('div', { class: 'actions small' }, close) : null);
      }));
    }

    function renderComments() {
      if (!view.comments.length) {
        renderInto(el.comments, h('li', { class: 'quiet empty' }, 'No comments yet.'));
        return;
      }
      const stepTitle = (sid) => {
        const s = view.steps.find((x) => x.id === sid);
        return s ? String(s.title) : null;
      };
      renderInto(el.comments, view.comments.map((c) => {
        const on = c.step ? stepTitle(c.step) : null;
        return h('li', { class: 'comment', 'data-comment': c.id },
          h('p', { class: 'comment-meta' },
            h('span', { class: 'author' }, nameOf(c.author)), ' · ', timeEl(c.at),
            on ? ' · on ' + on : null),
          h('p', { class: 'comment-text' }, String(c.text)));
      }));
    }

    function syncText(m) {
      if (m.node_id === view.me) return 'this computer';
      if (m.removed) return 'removed';
      const s = (view.sync || []).find((x) => x.node_id === m.node_id);
      if (!s) return '';
      const via = s.link === 'relayed' ? ' (through a relay)' : '';
      if (s.not_serving) return 'has not accepted yet';
      if (s.in_sync === true) return s.connected ? 'in sync' + via : 'in sync, not connected now';
      if (s.in_sync === false) return 'catching up' + via;
      if (s.connected) return 'connected' + via;
      return s.last_heard ? 'not connected, last heard ' + when(s.last_heard) : 'not connected yet';
    }

    function renderMembers() {
      renderInto(el.members, view.members.map((m) =>
        h('li', { class: 'member' + (m.removed ? ' removed' : ''), 'data-node': m.node_id },
          h('span', { class: 'author' }, nameOf(m.node_id)), ' · ',
          h('span', { class: 'role' }, String(m.role)),
          h('span', { class: 'sync' }, syncText(m)))));
    }

    // The forms below are built once and only shown, hidden or fed new options.

    function stepForm() {
      const title = h('input', { type: 'text', id: 'step-title', maxlength: 500 });
      const assignee = select('step-assignee', [['', 'Nobody yet']]);
      const due = h('input', { type: 'date', id: 'step-due' });
      const cust = checkbox('The customer takes part', 'step-customer');
      const addBtn = h('button', { type: 'submit', id: 'step-add' }, 'Add step');
      const form = h('form', { class: 'card', id: 'step-form', hidden: true },
        h('h3', null, 'Add a step'),
        field('Step', title).wrap,
        field('Assignee', assignee).wrap,
        field('Due (optional)', due).wrap,
        cust.wrap,
        h('div', { class: 'actions' }, addBtn));
      form.addEventListener('submit', (e) => {
        e.preventDefault();
        run(act(addBtn, async () => {
          reply(await edit(id, {
            op: 'add_step',
            title: title.value.trim(),
            detail: null,
            assignee: assignee.value || null,
            customer_involved: cust.input.checked,
            due: due.value || null,
          }), 'Edited');
          title.value = '';
          due.value = '';
          cust.input.checked = false;
          await page.refresh();
        }));
      });
      return {
        form,
        update() {
          form.hidden = !editsWork();
          setOptions(assignee, [['', 'Nobody yet']].concat(
            view.members.filter((m) => !m.removed && m.role !== 'observer')
              .map((m) => [m.node_id, nameOf(m.node_id) + ' · ' + m.role])));
        },
      };
    }

    function decisionForm() {
      const question = h('input', { type: 'text', id: 'decision-question', maxlength: 500 });
      const options = h('textarea', { id: 'decision-options', rows: 3 });
      const who = select('decision-who', [['customer', 'The customer'], ['members', 'The members']]);
      const vote = checkbox('Vote (closed by the customer or an owner)', 'decision-vote');
      const openBtn = h('button', { type: 'submit', id: 'decision-add' }, 'Open decision');
      const form = h('form', { class: 'card', id: 'decision-form', hidden: true },
        h('h3', null, 'New decision'),
        field('Question', question).wrap,
        field('Options, one per line', options).wrap,
        field('Who decides', who).wrap,
        vote.wrap,
        h('div', { class: 'actions' }, openBtn));
      form.addEventListener('submit', (e) => {
        e.preventDefault();
        run(act(openBtn, async () => {
          const opts = options.value.split('\n').map((s) => s.trim()).filter(Boolean);
          reply(await edit(id, {
            op: 'new_decision',
            question: question.value.trim(),
            options: opts,
            who: who.value,
            mode: vote.input.checked ? 'vote' : 'choice',
            step: null,
          }), 'Edited');
          question.value = '';
          options.value = '';
          vote.input.checked = false;
          await page.refresh();
        }));
      });
      return {
        form,
        update() {
          form.hidden = !editsWork();
        },
      };
    }

    function commentForm() {
      const text = h('textarea', { id: 'comment-text', rows: 3 });
      // A comment is about the whole flow, or about one of its steps (as `comment --step`).
      const about = select('comment-step', [['', 'The whole flow']]);
      const send = h('button', { type: 'submit', id: 'comment-send' }, 'Comment');
      const form = h('form', { class: 'card', id: 'comment-form' },
        field('Comment', text).wrap,
        field('About', about).wrap,
        h('div', { class: 'actions' }, send));
      form.addEventListener('submit', (e) => {
        e.preventDefault();
        run(act(send, async () => {
          reply(await edit(id, { op: 'comment', text: text.value, step: about.value || null }), 'Edited');
          text.value = '';
          about.value = '';
          await page.refresh();
        }));
      });
      return {
        form,
        update() {
          setOptions(about, [['', 'The whole flow']].concat(
            view.steps.map((st) => [String(st.id), 'Step: ' + String(st.title)])));
        },
      };
    }

    function inviteForm() {
      const ROLES = [
        ['customer', 'customer'],
        ['owner', 'owner'],
        ['contributor', 'contributor'],
        ['observer', 'observer'],
      ];
      const role = select('invite-role', ROLES);
      let touched = false;
      role.addEventListener('change', () => {
        touched = true;
      });
      const create = h('button', { type: 'submit', id: 'invite-create' }, 'Create ticket');
      const link = h('input', { type: 'text', id: 'invite-link', readonly: true });
      const raw = h('input', { type: 'text', id: 'invite-ticket', readonly: true });
      const copy = h('button', { type: 'button', class: 'secondary', id: 'invite-copy' }, 'Copy');
      const copied = h('span', { class: 'quiet', role: 'status' });
      const out = h('div', { id: 'invite-out', hidden: true },
        field('Ticket to send', link, 'Send this link to the person you invite. It works once, for 7 days.').wrap,
        h('div', { class: 'actions' }, copy, copied),
        field('The ticket alone (for coflow flow join)', raw).wrap);
      const form = h('form', { class: 'card', id: 'invite-form', hidden: true },
        h('h3', null, 'Invite someone'),
        field('Role', role).wrap,
        h('div', { class: 'actions' }, create),
        out);
      for (const input of [link, raw]) input.addEventListener('focus', () => input.select());
      copy.addEventListener('click', () => {
        link.select();
        const done = () => {
          copied.textContent = 'Copied.';
        };
        if (navigator.clipboard) navigator.clipboard.writeText(link.value).then(done, () => showError('Copying was refused; select the link and copy it.'));
      });
      form.addEventListener('submit', (e) => {
        e.preventDefault();
        run(act(create, async () => {
          const inv = reply(await call({ call: 'invite', flow: id, role: role.value, expires_in: 604800, uses: 1 }), 'Invited');
          raw.value = String(inv.ticket);
          link.value = location.origin + '/join#' + String(inv.ticket);
          copied.textContent = '';
          out.hidden = false;
          link.focus();
        }));
      });
      return {
        form,
        update() {
          form.hidden = !(manages() && isOpen());
          if (!touched) {
            const hasCustomer = view.members.some((m) => m.role === 'customer' && !m.removed);
            role.value = hasCustomer ? 'contributor' : 'customer';
          }
        },
      };
    }

    return page;
  }

  // ---------------------------------------------------------------- start

  async function boot() {
    takeLoginKey();
    try {
      state.status = reply(await call({ call: 'status' }), 'Status');
    } catch (e) {
      if (e instanceof LoginNeeded) return;
      const main = root();
      main.replaceChildren();
      showError(e);
      return;
    }
    showMe();
    route();
    startEvents();
  }

  boot();
})();
