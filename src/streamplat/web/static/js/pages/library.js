// The library: ready recordings with thumbnails, a page at a time, a seekable player and
// delete for their owners. VOD GETs need no token, so it works signed out too.

import { api } from '../api.js';
import { base } from '../config.js';
import { recordingCard, skeletonCards } from '../components.js';
import { live } from '../live.js';
import { playFile } from '../player.js';
import { currentUser } from '../session.js';
import { confirmDialog, errorBox, fill, fmtBytes, fmtDate, fmtDuration, h, icon, notice, plural, spinner, toast, withBusy } from '../ui.js';

const PAGE_SIZE = 12;

function libraryUrl({ page = 1, mine = false, play = null } = {}) {
  const q = new URLSearchParams();
  if (page > 1) q.set('page', String(page));
  if (mine) q.set('mine', '1');
  if (play) q.set('play', play);
  const s = q.toString();
  return `/library${s ? `?${s}` : ''}`;
}

export async function render(ctx) {
  ctx.setTitle('Library');
  const user = currentUser();
  const pageNo = Math.max(1, Number.parseInt(ctx.query.get('page') || '1', 10) || 1);
  const mine = !!user && ctx.query.get('mine') === '1';
  let playing = ctx.query.get('play');

  const grid = h('div', { class: 'grid', id: 'library-grid' }, ...skeletonCards(8));
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });
  const status = h('div', { class: 'section-status' });
  const playerSection = h('section', { class: 'vod card', hidden: true, 'aria-label': 'Recording player' });
  let vodPlayer = null;
  let waitTimer = null;
  ctx.onLeave(() => { if (vodPlayer) vodPlayer.destroy(); clearTimeout(waitTimer); });

  const closePlayer = () => {
    if (vodPlayer) vodPlayer.destroy();
    vodPlayer = null;
    playing = null;
    playerSection.hidden = true;
    playerSection.replaceChildren();
    history.replaceState(null, '', libraryUrl({ page: pageNo, mine }));
  };

  const canDelete = (rec) => !!user && (user.role === 'admin' || user.id === rec.user_id);

  const showPlayer = (rec) => {
    clearTimeout(waitTimer);
    if (vodPlayer) vodPlayer.destroy();
    vodPlayer = null;
    playing = rec.stream_id;
    history.replaceState(null, '', libraryUrl({ page: pageNo, mine, play: rec.stream_id }));
    const close = h('button', { class: 'btn btn-small btn-ghost vod-close', type: 'button', 'aria-label': 'Close the player' }, icon('close'));
    close.addEventListener('click', closePlayer);
    const actions = h('div', { class: 'actions' },
      h('a', { class: 'btn btn-small', href: base('vod') + rec.file_path, download: `${rec.title || rec.stream_id}.mp4` }, 'Download'));
    if (canDelete(rec)) {
      const del = h('button', { class: 'btn btn-small btn-danger', type: 'button', dataset: { action: 'delete-recording' } }, icon('trash'), 'Delete');
      del.addEventListener('click', () => deleteRecording(rec, del));
      actions.append(del);
    }
    const body = h('div', { class: 'vod-info' },
      h('div', { class: 'vod-head' }, h('h2', null, rec.title || 'Untitled recording'), close),
      h('p', { class: 'card-meta' }, `${rec.username} · ${fmtDate(rec.created_at)} · ${fmtDuration(rec.duration_seconds)}`,
        rec.width && rec.height ? ` · ${rec.width}×${rec.height}` : '', rec.file_size_bytes ? ` · ${fmtBytes(rec.file_size_bytes)}` : ''),
      actions);
    if (rec.status === 'ready') {
      const video = h('video', { id: 'vod-player', class: 'player-video', controls: true, playsInline: true, preload: 'metadata',
        poster: rec.thumbnail_path ? base('vod') + rec.thumbnail_path : null });
      playerSection.replaceChildren(h('div', { class: 'player' }, video), body);
      vodPlayer = playFile(video, base('vod') + rec.file_path);
    } else {
      const state = rec.status === 'failed'
        ? notice(`This recording could not be made${rec.error ? `: ${rec.error}` : '.'}`, 'error')
        : h('div', { class: 'alert alert-info', role: 'status' }, spinner(), ' This recording is still being prepared; it will play here when it is ready.',
          rec.status_reason ? h('span', { class: 'status-reason' }, ` (${rec.status_reason})`) : '');
      playerSection.replaceChildren(h('div', { class: 'player player-empty' }, state), body);
      if (rec.status === 'processing') waitTimer = setTimeout(() => openById(rec.stream_id), live.connected ? 10_000 : 3000);
    }
    playerSection.hidden = false;
    playerSection.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
  };

  const openById = async (streamId) => {
    try {
      const rec = await api('vod', `/api/v1/recordings/${encodeURIComponent(streamId)}`, { signal: ctx.signal });
      if (ctx.isCurrent() && playing === streamId) showPlayer(rec);
    } catch (err) {
      if (err.name === 'AbortError') return;
      playerSection.hidden = false;
      fill(playerSection, h('div', { class: 'vod-info' },
        err.status === 404 ? notice('This recording does not exist (it may have been deleted, or the stream sent no video).', 'error') : errorBox(err),
        h('div', { class: 'actions' }, h('button', { class: 'btn btn-small', type: 'button', onclick: closePlayer }, 'Close'))));
    }
  };

  const deleteRecording = async (rec, button) => {
    const ok = await confirmDialog(`Delete the recording “${rec.title || 'Untitled'}”? Its video and thumbnail are removed for good.`, 'Delete recording');
    if (!ok) return;
    await withBusy(button, 'Deleting…', async () => {
      try {
        await api('vod', `/api/v1/recordings/${encodeURIComponent(rec.stream_id)}`, { method: 'DELETE', auth: true });
        toast('Recording deleted.', 'success');
        if (playing === rec.stream_id) closePlayer();
        loadPage();
      } catch (err) {
        if (err.status !== 401) toast(err.message, 'error');
      }
    });
  };

  const loadPage = async () => {
    try {
      const data = await api('vod', '/api/v1/recordings', {
        query: { status: 'ready', limit: PAGE_SIZE, offset: (pageNo - 1) * PAGE_SIZE, user_id: mine ? user.id : null },
        signal: ctx.signal,
      });
      status.replaceChildren();
      if (!data.recordings.length) {
        grid.replaceChildren(h('div', { class: 'empty empty-inline' }, icon('film', 'empty-icon'),
          h('p', null, pageNo > 1 ? 'There are no recordings on this page.' : mine ? 'You have no recordings yet. Every stream you stop is recorded.' : 'No recordings yet. Every stream is recorded once it ends.'),
          pageNo > 1 ? h('a', { class: 'btn', href: libraryUrl({ mine }) }, 'Back to the first page') : null));
      } else {
        grid.replaceChildren(...data.recordings.map((rec) => recordingCard(rec, { onOpen: showPlayer })));
      }
      const pages = Math.max(1, Math.ceil(data.total / PAGE_SIZE));
      const from = data.total ? data.pagination.offset + 1 : 0;
      const to = data.pagination.offset + data.recordings.length;
      pager.replaceChildren(
        pageNo > 1 ? h('a', { class: 'btn btn-small', href: libraryUrl({ page: pageNo - 1, mine }), rel: 'prev', dataset: { action: 'newer' } }, icon('arrowLeft'), 'Newer') : h('span'),
        h('span', { class: 'pager-info' }, !data.total ? ''
          : pages === 1 && pageNo === 1 ? plural(data.total, 'recording')
            : `${from}–${to} of ${plural(data.total, 'recording')} · page ${pageNo} of ${pages}`),
        data.pagination.has_more ? h('a', { class: 'btn btn-small', href: libraryUrl({ page: pageNo + 1, mine }), rel: 'next', dataset: { action: 'older' } }, 'Older', icon('arrowRight')) : h('span'));
    } catch (err) {
      if (err.name === 'AbortError') return;
      grid.replaceChildren();
      status.replaceChildren(errorBox(err, { retry: loadPage }));
    }
  };

  const tabs = user ? h('div', { class: 'tabs', role: 'tablist' },
    h('a', { class: `tab${mine ? '' : ' active'}`, href: libraryUrl({}), role: 'tab', 'aria-selected': String(!mine) }, 'All recordings'),
    h('a', { class: `tab${mine ? ' active' : ''}`, href: libraryUrl({ mine: true }), role: 'tab', 'aria-selected': String(mine) }, 'Mine')) : null;

  const off = live.onMessage((msg) => {
    if (msg.type === 'recording_ready') loadPage();
    if ((msg.type === 'recording_ready' || msg.type === 'recording_failed') && msg.stream_id === playing) openById(playing);
  });
  ctx.onLeave(off);

  ctx.root.replaceChildren(
    h('div', { class: 'page-head page-head-row' }, h('h1', null, 'Library'), tabs),
    playerSection,
    status,
    grid,
    pager);
  if (playing) openById(playing);
  await loadPage();
}
