// The streamer's dashboard: create a stream, start it, point OBS at it, watch its status and
// viewers, stop it, and see the recordings it left.

import { api, ApiError } from '../api.js';
import { base, cfg } from '../config.js';
import { preview } from '../components.js';
import { live, poll } from '../live.js';
import { requireLogin } from '../router.js';
import { canStream, currentUser } from '../session.js';
import {
  clearFieldErrors, confirmDialog, copyField, errorBox, field, fmtDuration, h, icon, notice, plural,
  showFieldErrors, statusBadge, timeAgo, toast, viewerCount, withBusy,
} from '../ui.js';

const LIVE = new Set(['waiting', 'active']);
const LIST_LIMIT = 20;

function seconds(value) {
  return Number.isInteger(value) ? String(value) : String(Number(value.toFixed(1)));
}

function obsHint(open) {
  const seg = seconds(cfg().segment_seconds);
  return h('details', { class: 'obs-hint', open },
    h('summary', null, 'How to set up OBS'),
    h('ol', null,
      h('li', null, 'Settings → Stream: Service ', h('b', null, 'Custom…'), ', Server = the ', h('b', null, 'SRT URL'), ' above, leave Stream Key empty (the key is already in the URL).'),
      h('li', null, 'Settings → Output (Output Mode: Advanced) → Streaming: Keyframe Interval ', h('b', null, `${seg} s`), ' — the server cuts the video into ', seg, ' s segments, and a segment can only start at a keyframe.'),
      h('li', null, 'Video H.264 (x264 or a hardware encoder), audio AAC.'),
      h('li', null, 'Press ', h('b', null, 'Start Streaming'), '. The status here turns to ', h('b', null, 'Live'), ' within a few seconds.')));
}

/** One of the user's streams, with its actions; `update(data)` redraws it in place. */
class StreamPanel {
  constructor(stream, page) {
    this.page = page;
    this.data = { ...stream };
    this.connection = null; // {srt_url, stream_key} while live
    this.fetchingConnection = false;
    this.el = h('article', { class: 'card stream-panel', dataset: { streamId: stream.stream_id } });
    this.head = h('div', { class: 'stream-panel-head' });
    this.info = h('div', { class: 'stream-panel-info' });
    this.actions = h('div', { class: 'actions stream-actions' });
    this.body = h('div', { class: 'stream-panel-body' });
    this.message = h('div', { class: 'stream-panel-message' });
    this.waiting = notice('Waiting for OBS to connect: paste the SRT URL into OBS and press Start Streaming.', 'info');
    this.waiting.hidden = true;
    this.bodyKey = null;
    this.actionsKey = null;
    this.el.append(this.head, this.info, this.message, this.waiting, this.body, this.actions);
    this.draw();
  }

  get id() { return this.data.stream_id; }

  update(data) {
    const before = this.data.status;
    Object.assign(this.data, data);
    if (!LIVE.has(this.data.status)) this.connection = null;
    if (before !== this.data.status) this.message.replaceChildren();
    this.draw();
  }

  draw() {
    const d = this.data;
    const isLive = LIVE.has(d.status);
    this.el.classList.toggle('is-live', d.status === 'active');
    this.head.replaceChildren(
      h('div', { class: 'stream-panel-titles' },
        h('h3', { class: 'card-title' }, d.title || d.name),
        d.title && d.title !== d.name ? h('p', { class: 'card-meta' }, d.name) : null),
      h('div', { class: 'stream-panel-status' }, statusBadge(d.status), isLive ? viewerCount(d.viewer_count) : null));

    const facts = [];
    if (isLive && d.start_time) facts.push(h('span', { class: 'live-timer', dataset: { since: d.start_time } }, icon('clock'), ` ${fmtDuration((Date.now() - Date.parse(d.start_time)) / 1000)}`));
    if (d.status === 'created') facts.push(h('span', null, `Created ${timeAgo(d.created_at)}`));
    if (d.status === 'stopped') facts.push(h('span', null, d.start_time ? `Streamed ${timeAgo(d.start_time)}` : `Created ${timeAgo(d.created_at)}`));
    if (d.status_reason && d.status !== 'created') facts.push(h('span', { class: 'status-reason' }, d.status_reason));
    this.info.replaceChildren(...facts);

    this.waiting.hidden = !(d.status === 'waiting' && this.connection);

    // Rebuilt only when what they show changes: a poll every few seconds must not reset a
    // revealed key, a selection in the URL field or a button that is busy.
    const bodyKey = isLive ? `live|${this.connection ? `${this.connection.srt_url}|${this.connection.stream_key}` : ''}` : d.status;
    if (bodyKey !== this.bodyKey) {
      this.bodyKey = bodyKey;
      this.body.replaceChildren();
      if (isLive && this.connection) {
        const srt = copyField('SRT URL (OBS server)', this.connection.srt_url, { name: 'srt_url' });
        const key = copyField('Stream key (SRT passphrase)', this.connection.stream_key, { secret: true, name: 'stream_key' });
        this.body.append(h('div', { class: 'connection' }, srt.el, key.el, obsHint(d.status === 'waiting')));
      } else if (isLive) {
        this.body.append(h('div', { class: 'loading-inline' }, h('span', { class: 'spinner' }), ' Loading the connection details…'));
        this.loadConnection();
      } else if (d.status === 'created') {
        this.body.append(h('p', { class: 'muted' }, 'Start the stream to get the SRT address for OBS.'));
      }
    }

    if (d.status === this.actionsKey) return;
    this.actionsKey = d.status;
    const buttons = [];
    if (d.status === 'created') buttons.push(this.button('start', 'Start', 'btn-primary', 'play', () => this.start()));
    if (isLive) {
      buttons.push(h('a', { href: `/watch/${encodeURIComponent(d.stream_id)}`, class: 'btn', dataset: { action: 'watch' } }, icon('eye'), 'Watch'));
      buttons.push(this.button('stop', 'Stop', 'btn-danger', 'stop', () => this.stop()));
    }
    if (d.status === 'stopped') buttons.push(h('a', { href: `/library?play=${encodeURIComponent(d.stream_id)}`, class: 'btn', dataset: { action: 'recording' } }, icon('film'), 'Recording'));
    if (d.status === 'created') buttons.push(this.button('rotate-key', 'New key', 'btn-ghost', 'key', () => this.rotateKey()));
    buttons.push(this.button('delete', 'Delete', 'btn-ghost btn-quiet', 'trash', () => this.remove()));
    this.actions.replaceChildren(...buttons);
  }

  button(action, label, kind, iconName, onClick) {
    const b = h('button', { type: 'button', class: `btn ${kind}`, dataset: { action } }, icon(iconName), label);
    b.addEventListener('click', () => withBusy(b, `${label}…`, async () => {
      this.message.replaceChildren();
      try {
        await onClick();
      } catch (err) {
        if (err.status !== 401) this.message.replaceChildren(errorBox(err));
      }
    }));
    return b;
  }

  async loadConnection() {
    if (this.fetchingConnection) return;
    this.fetchingConnection = true;
    try {
      const detail = await api('main', `/api/streams/${encodeURIComponent(this.id)}`, { auth: true });
      this.data = { ...this.data, ...detail };
      if (detail.srt_url) this.connection = { srt_url: detail.srt_url, stream_key: detail.stream_key };
      this.bodyKey = null;
      this.draw();
    } catch (err) {
      if (err.status !== 401) {
        this.body.replaceChildren(errorBox(err, { retry: () => { this.bodyKey = null; this.draw(); } }));
      }
    } finally {
      this.fetchingConnection = false;
    }
  }

  async start() {
    const started = await api('main', `/api/streams/${encodeURIComponent(this.id)}/start`, { method: 'POST', auth: true });
    this.connection = { srt_url: started.srt_url, stream_key: started.stream_key };
    this.update({ status: started.status, start_time: this.data.start_time || new Date().toISOString(), viewer_count: 0 });
    toast('Stream started: connect OBS to go live.', 'success');
    this.page.refresh();
  }

  async stop() {
    const ok = await confirmDialog('Stop this stream? Viewers will see that it ended, and the recording will be prepared.', 'Stop stream');
    if (!ok) return;
    const stopped = await api('main', `/api/streams/${encodeURIComponent(this.id)}/stop`, { method: 'POST', auth: true });
    this.update({ status: stopped.status, viewer_count: 0 });
    toast(stopped.message, 'success');
    this.page.refresh();
    this.page.refreshRecordings();
  }

  async rotateKey() {
    const rotated = await api('main', `/api/streams/${encodeURIComponent(this.id)}/rotate-key`, { method: 'POST', auth: true });
    toast(rotated.message || 'New stream key generated.', 'success');
  }

  async remove() {
    const isLive = LIVE.has(this.data.status);
    const ok = await confirmDialog(isLive
      ? 'Delete this stream? It is live: it will be stopped first. Its recording stays in the library.'
      : 'Delete this stream? Its recording, if any, stays in the library.', 'Delete stream');
    if (!ok) return;
    await api('main', `/api/streams/${encodeURIComponent(this.id)}`, { method: 'DELETE', auth: true });
    toast('Stream deleted.', 'success');
    this.page.forget(this.id);
  }
}

function createForm(page) {
  const name = h('input', { name: 'name', required: true, maxlength: 100, placeholder: 'e.g. Friday speedrun' });
  const title = h('input', { name: 'title', maxlength: 200, placeholder: 'Shown to viewers (defaults to the name)' });
  const description = h('textarea', { name: 'description', rows: 3, maxlength: 5000, placeholder: 'What is it about? (optional)' });
  const submit = h('button', { class: 'btn btn-primary btn-block', type: 'submit', dataset: { action: 'create' } }, icon('plus'), 'Create stream');
  const status = h('div', { class: 'form-status' });
  const form = h('form', { class: 'form', novalidate: true, id: 'create-stream' },
    field('Name', name), field('Title', title), field('Description', description), status, submit);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    status.replaceChildren();
    await withBusy(submit, 'Creating…', async () => {
      try {
        const created = await api('main', '/api/streams', {
          method: 'POST', auth: true,
          body: { name: name.value.trim(), title: title.value.trim(), description: description.value.trim() },
        });
        form.reset();
        toast(`Stream “${created.title || created.name}” created. Press Start when you are ready.`, 'success');
        page.add({ ...created, viewer_count: 0, start_time: null });
      } catch (err) {
        if (err instanceof ApiError && err.status === 422 && err.details) {
          const rest = showFieldErrors(form, err.details);
          if (rest.length) status.replaceChildren(notice(rest.join('. '), 'error'));
        } else if (err.status !== 401) {
          status.replaceChildren(errorBox(err));
        }
      }
    });
  });
  return form;
}

function recordingRow(rec) {
  const ready = rec.status === 'ready';
  const thumb = preview(ready ? base('vod') + rec.thumbnail_path : null, { label: rec.title });
  const content = [thumb,
    h('div', { class: 'row-body' },
      h('span', { class: 'row-title' }, rec.title || 'Untitled'),
      h('span', { class: 'row-meta' }, statusBadge(rec.status),
        ready ? ` ${fmtDuration(rec.duration_seconds)}` : '',
        rec.status === 'failed' && rec.error ? ` ${rec.error}` : '',
        rec.status === 'processing' && rec.status_reason ? ` ${rec.status_reason}` : '',
        ` · ${timeAgo(rec.created_at)}`))];
  return ready
    ? h('a', { class: 'rec-row', href: `/library?play=${encodeURIComponent(rec.stream_id)}`, dataset: { streamId: rec.stream_id } }, ...content)
    : h('div', { class: 'rec-row', dataset: { streamId: rec.stream_id } }, ...content);
}

function viewerPage(ctx, user) {
  ctx.root.replaceChildren(h('section', { class: 'section narrow' },
    h('h1', null, 'My account'),
    h('p', { class: 'muted' }, `Signed in as ${user.username} (${user.email || user.role}).`),
    h('div', { class: 'alert alert-info viewer-notice', role: 'status' },
      h('strong', null, 'Viewer accounts cannot create streams.'),
      h('span', null, 'You can watch live streams and recordings. To go live, ask an admin to give your account the streamer role, or sign up again as a streamer.')),
    h('div', { class: 'actions' },
      h('a', { href: '/', class: 'btn btn-primary' }, 'See who is live'),
      h('a', { href: '/library', class: 'btn' }, 'Browse recordings'))));
}

export async function render(ctx) {
  if (!requireLogin()) return;
  const user = currentUser();
  ctx.setTitle('Dashboard');
  if (!canStream(user)) {
    viewerPage(ctx, user);
    return;
  }

  const panels = new Map();
  const list = h('div', { class: 'stream-list' }, h('div', { class: 'card loading-card' }, h('span', { class: 'spinner' }), ' Loading your streams…'));
  const listStatus = h('div', { class: 'section-status' });
  const listNote = h('p', { class: 'muted small' });
  const recList = h('div', { class: 'rec-list' }, h('div', { class: 'loading-inline' }, 'Loading…'));
  const subscription = live.watchStreams([]);
  ctx.onLeave(() => subscription.drop());
  let loaded = false;

  const page = {
    add(stream) {
      if (!loaded) return;
      const panel = new StreamPanel(stream, page);
      panels.set(stream.stream_id, panel);
      list.prepend(panel.el);
      list.querySelector('.empty')?.remove();
      subscription.set([...panels.keys()]);
    },
    forget(id) {
      panels.get(id)?.el.remove();
      panels.delete(id);
      if (!panels.size) drawEmpty();
      subscription.set([...panels.keys()]);
    },
    refresh: () => poller.now(),
    refreshRecordings: () => loadRecordings(),
  };

  const drawEmpty = () => list.replaceChildren(h('div', { class: 'empty empty-inline' },
    icon('broadcast', 'empty-icon'), h('p', null, 'No streams yet. Create one to get an SRT address for OBS.')));

  const loadStreams = async () => {
    try {
      const data = await api('main', '/api/streams', { auth: true, query: { limit: LIST_LIMIT }, signal: ctx.signal });
      listStatus.replaceChildren();
      loaded = true;
      const order = [];
      const seen = new Set();
      for (const s of data.streams) {
        seen.add(s.stream_id);
        let panel = panels.get(s.stream_id);
        if (panel) panel.update(s);
        else {
          panel = new StreamPanel(s, page);
          panels.set(s.stream_id, panel);
        }
        order.push(panel.el);
      }
      for (const id of [...panels.keys()]) if (!seen.has(id)) panels.delete(id);
      if (order.length) list.replaceChildren(...order);
      else drawEmpty();
      listNote.textContent = data.total > data.streams.length ? `Showing the ${data.streams.length} newest of ${plural(data.total, 'stream')}.` : '';
      subscription.set([...seen]);
    } catch (err) {
      if (err.name === 'AbortError' || err.status === 401) return;
      listStatus.replaceChildren(errorBox(err, { retry: () => poller.now() }));
      if (!loaded) list.replaceChildren();
    }
  };

  let recTimer = null;
  const loadRecordings = async () => {
    clearTimeout(recTimer);
    try {
      const data = await api('vod', '/api/v1/recordings', { query: { user_id: user.id, limit: 5 }, signal: ctx.signal });
      recList.replaceChildren(...(data.recordings.length
        ? data.recordings.map(recordingRow)
        : [h('p', { class: 'muted' }, 'Recordings of your streams appear here once a stream ends.')]));
      // Processing takes seconds to minutes; look again until it settles.
      if (data.recordings.some((r) => r.status === 'processing')) recTimer = setTimeout(loadRecordings, live.connected ? 20_000 : 3000);
    } catch (err) {
      if (err.name !== 'AbortError') recList.replaceChildren(errorBox(err, { retry: loadRecordings }));
    }
  };
  ctx.onLeave(() => clearTimeout(recTimer));

  const poller = poll(ctx, loadStreams, { fast: 3000, slow: 20_000 });
  loadRecordings();

  const off = live.onMessage((msg) => {
    const panel = panels.get(msg.stream_id);
    if (msg.type === 'stream_status' && panel) {
      panel.update({ status: msg.status });
      poller.now();
    } else if (msg.type === 'viewer_count' && panel) {
      panel.update({ viewer_count: msg.count });
    } else if (msg.type === 'recording_ready' || msg.type === 'recording_failed') {
      loadRecordings();
    }
  });
  ctx.onLeave(off);

  // The live timers tick every second without asking the server.
  const ticker = setInterval(() => {
    for (const el of list.querySelectorAll('.live-timer')) {
      el.lastChild.textContent = ` ${fmtDuration((Date.now() - Date.parse(el.dataset.since)) / 1000)}`;
    }
  }, 1000);
  ctx.onLeave(() => clearInterval(ticker));

  ctx.root.replaceChildren(
    h('div', { class: 'page-head' },
      h('h1', null, 'Dashboard'),
      h('p', { class: 'muted' }, `Go live from OBS over SRT. Every stream is recorded.`)),
    h('div', { class: 'dashboard' },
      h('section', { class: 'dashboard-main', 'aria-labelledby': 'your-streams' },
        h('h2', { id: 'your-streams' }, 'Your streams'), listStatus, list, listNote),
      h('aside', { class: 'dashboard-side' },
        h('section', { class: 'card card-pad' }, h('h2', null, 'New stream'), createForm(page)),
        h('section', { class: 'card card-pad' },
          h('div', { class: 'section-head' }, h('h2', null, 'Recent recordings'), h('a', { href: '/library?mine=1', class: 'link-more' }, 'All')),
          recList))));
}
