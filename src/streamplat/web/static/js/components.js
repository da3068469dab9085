// Cards shared by several pages: a live stream, a recording.

import { base } from './config.js';
import { fill, fmtDuration, h, icon, statusBadge, timeAgo, viewerCount } from './ui.js';

/** A preview box: the image if there is one (falling back on error), else a styled placeholder. */
export function preview(src, { label = '', live = false } = {}) {
  const box = h('div', { class: `preview${live ? ' preview-live' : ''}` });
  const placeholder = () => h('div', { class: 'preview-placeholder', 'aria-hidden': 'true' },
    icon(live ? 'broadcast' : 'film', 'preview-icon'),
    label ? h('span', { class: 'preview-initial' }, label.slice(0, 1).toUpperCase()) : null);
  if (src) {
    const img = h('img', { src, alt: '', loading: 'lazy', decoding: 'async' });
    img.addEventListener('error', () => img.replaceWith(placeholder()));
    box.append(img);
  } else {
    box.append(placeholder());
  }
  return box;
}

/** A live stream on the home page; `update(summary)` refreshes it in place. */
export function liveCard(stream) {
  const badgeSlot = h('span', { class: 'preview-badge' });
  const viewers = h('span', { class: 'preview-viewers' });
  const title = h('h3', { class: 'card-title' });
  const meta = h('p', { class: 'card-meta' });
  const box = preview(null, { live: true, label: stream.username });
  box.append(badgeSlot, viewers);
  const el = h('a', { class: 'card card-link stream-card', href: `/watch/${encodeURIComponent(stream.stream_id)}`, dataset: { streamId: stream.stream_id } },
    box, h('div', { class: 'card-body' }, title, meta));
  const update = (s) => {
    Object.assign(stream, s);
    badgeSlot.replaceChildren(statusBadge(stream.status));
    viewers.replaceChildren(viewerCount(stream.viewer_count));
    title.textContent = stream.title || stream.name;
    title.title = title.textContent;
    fill(meta, h('span', null, stream.username),
      stream.start_time ? h('span', null, ` · started ${timeAgo(stream.start_time)}`) : null);
  };
  update(stream);
  return { el, update };
}

/** A recording card; `onOpen(rec)` makes the card a button (library), else it links to the library. */
export function recordingCard(rec, { onOpen, extra } = {}) {
  const ready = rec.status === 'ready';
  const thumb = ready && rec.thumbnail_path ? base('vod') + rec.thumbnail_path : null;
  const box = preview(thumb, { label: rec.title || rec.username });
  if (ready && rec.duration_seconds !== null) box.append(h('span', { class: 'preview-duration' }, fmtDuration(rec.duration_seconds)));
  if (!ready) box.append(h('span', { class: 'preview-badge' }, statusBadge(rec.status)));
  const body = h('div', { class: 'card-body' },
    h('h3', { class: 'card-title', title: rec.title }, rec.title || 'Untitled recording'),
    h('p', { class: 'card-meta' }, h('span', null, rec.username), h('span', null, ` · ${timeAgo(rec.created_at)}`)),
    extra || null);
  if (onOpen && ready) {
    const open = h('button', { class: 'card-open', type: 'button', 'aria-label': `Play ${rec.title || 'recording'}` }, box);
    open.addEventListener('click', () => onOpen(rec));
    return h('article', { class: 'card recording-card', dataset: { streamId: rec.stream_id } }, open, body);
  }
  const href = ready ? `/library?play=${encodeURIComponent(rec.stream_id)}` : null;
  return href
    ? h('a', { class: 'card card-link recording-card', href, dataset: { streamId: rec.stream_id } }, box, body)
    : h('article', { class: 'card recording-card', dataset: { streamId: rec.stream_id } }, box, body);
}

export function skeletonCards(n = 4) {
  return Array.from({ length: n }, () => h('div', { class: 'card skeleton', 'aria-hidden': 'true' },
    h('div', { class: 'preview' }), h('div', { class: 'card-body' }, h('div', { class: 'skeleton-line' }), h('div', { class: 'skeleton-line short' }))));
}
