// Home: the streams live now (signed-in users; the list needs a token) and the latest recordings.

import { api } from '../api.js';
import { liveCard, recordingCard, skeletonCards } from '../components.js';
import { live, poll } from '../live.js';
import { canStream, currentUser } from '../session.js';
import { errorBox, h, icon } from '../ui.js';

async function latestRecordings(ctx, grid) {
  try {
    const page = await api('vod', '/api/v1/recordings', { query: { status: 'ready', limit: 4 }, signal: ctx.signal });
    if (!page.recordings.length) {
      grid.replaceWith(h('p', { class: 'muted' }, 'No recordings yet. Every stream is recorded once it ends.'));
      return;
    }
    grid.replaceChildren(...page.recordings.map((rec) => recordingCard(rec)));
  } catch (err) {
    if (err.name !== 'AbortError') grid.replaceChildren(errorBox(err));
  }
}

function recordingsSection(ctx) {
  const grid = h('div', { class: 'grid' }, ...skeletonCards(4));
  latestRecordings(ctx, grid);
  return h('section', { class: 'section' },
    h('div', { class: 'section-head' }, h('h2', null, 'Latest recordings'),
      h('a', { href: '/library', class: 'link-more' }, 'Open the library ', icon('arrowRight'))),
    grid);
}

export async function render(ctx) {
  ctx.setTitle('Live now');
  const user = currentUser();
  if (!user) {
    ctx.root.replaceChildren(
      h('section', { class: 'hero' },
        h('h1', null, 'Live streaming on your own server'),
        h('p', null, 'Go live from OBS, watch in any browser, and keep every broadcast as a recording.'),
        h('div', { class: 'actions' },
          h('a', { href: '/register', class: 'btn btn-primary' }, 'Create an account'),
          h('a', { href: '/login', class: 'btn btn-ghost' }, 'Log in'))),
      recordingsSection(ctx));
    return;
  }

  const grid = h('div', { class: 'grid', id: 'live-grid' }, ...skeletonCards(3));
  const status = h('div', { class: 'section-status' });
  const cards = new Map();
  // Every stream: one that goes live anywhere should show up here at once.
  const subscription = live.watchStreams('all');
  ctx.onLeave(() => subscription.drop());

  const draw = (streams) => {
    status.replaceChildren();
    if (!streams.length) {
      cards.clear();
      grid.replaceChildren(h('div', { class: 'empty empty-inline' },
        icon('broadcast', 'empty-icon'),
        h('p', null, 'Nobody is live right now.'),
        canStream(user) ? h('a', { href: '/dashboard', class: 'btn btn-primary' }, 'Go live') : h('p', { class: 'muted' }, 'Check back soon, or browse the recordings below.')));
      return;
    }
    const seen = new Set();
    const order = [];
    for (const s of streams) {
      seen.add(s.stream_id);
      let card = cards.get(s.stream_id);
      if (card) card.update(s);
      else {
        card = liveCard(s);
        cards.set(s.stream_id, card);
      }
      order.push(card.el);
    }
    for (const id of [...cards.keys()]) if (!seen.has(id)) cards.delete(id);
    grid.replaceChildren(...order);
  };

  // New streams only show up in the list, so poll it even while the socket is up.
  const poller = poll(ctx, async () => {
    try {
      const page = await api('main', '/api/streams/live', { auth: true, query: { limit: 48 }, signal: ctx.signal });
      draw(page.streams);
    } catch (err) {
      if (err.name === 'AbortError' || err.status === 401) return;
      status.replaceChildren(errorBox(err));
    }
  }, { fast: 5000, slow: 15_000 });

  const off = live.onMessage((msg) => {
    const card = cards.get(msg.stream_id);
    if (msg.type === 'viewer_count' && card) card.update({ viewer_count: msg.count });
    else if (msg.type === 'stream_status') {
      if (card && (msg.status === 'waiting' || msg.status === 'active')) card.update({ status: msg.status });
      else poller.now();
    }
  });
  ctx.onLeave(off);

  ctx.root.replaceChildren(
    h('section', { class: 'section' },
      h('div', { class: 'section-head' }, h('h1', null, 'Live now'),
        canStream(user) ? h('a', { href: '/dashboard', class: 'btn btn-small btn-primary' }, icon('broadcast'), 'Go live') : null),
      status,
      grid),
    recordingsSection(ctx));
}
