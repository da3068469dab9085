// Watch a stream live; when it ends, say so and offer its recording once it is ready.

import { api } from '../api.js';
import { base } from '../config.js';
import { live, poll } from '../live.js';
import { playFile, playLive } from '../player.js';
import { requireLogin } from '../router.js';
import { errorBox, fill, fmtDuration, h, icon, plural, spinner, statusBadge, timeAgo } from '../ui.js';

const UUIDISH = /^[0-9a-fA-F-]{8,64}$/;

export async function render(ctx) {
  if (!requireLogin()) return;
  const id = ctx.params.id;
  ctx.setTitle('Watch');
  if (!UUIDISH.test(id)) {
    notFound(ctx);
    return;
  }

  let stream;
  try {
    stream = await api('main', `/api/streams/${encodeURIComponent(id)}`, { auth: true, signal: ctx.signal });
  } catch (err) {
    if (err.name === 'AbortError' || err.status === 401) return;
    if (err.status === 404) notFound(ctx);
    else ctx.root.replaceChildren(errorBox(err, { retry: () => render(ctx) }));
    return;
  }
  if (!ctx.isCurrent()) return;

  const video = h('video', { id: 'player', class: 'player-video', controls: true, playsInline: true, preload: 'auto' });
  const overlay = h('div', { class: 'player-overlay', role: 'status' });
  const playerBox = h('div', { class: 'player' }, video, overlay);
  const title = h('h1', { class: 'watch-title' });
  const badge = h('span', { class: 'watch-badge' });
  const viewers = h('span', { class: 'watch-viewers' });
  const meta = h('p', { class: 'watch-meta' });
  const description = h('p', { class: 'watch-description' });
  const endedBox = h('div', { class: 'ended-box', hidden: true });

  let player = null; // {engine, destroy}
  let retryTimer = null;
  let recording = null; // last GET /recordings/{id} answer, or 'none'
  let recordingTimer = null;
  let playingRecording = false;
  let everLive = stream.status === 'active';

  const setOverlay = (...content) => {
    fill(overlay, ...content);
    overlay.hidden = content.length === 0;
    // The native controls would show through the overlay and do nothing useful there.
    video.controls = overlay.hidden;
  };

  const stopPlayer = () => {
    clearTimeout(retryTimer);
    if (player) player.destroy();
    player = null;
  };

  const startPlayer = async () => {
    if (player || playingRecording) return;
    setOverlay(h('div', { class: 'overlay-box' }, spinner(), h('p', null, 'Loading the live video…')));
    try {
      player = await playLive(video, base('stream') + stream.hls_url, {
        onPlaying: () => { if (!playingRecording) setOverlay(); },
        onFatal: (message) => {
          stopPlayer();
          if (stream.status === 'stopped') return;
          setOverlay(h('div', { class: 'overlay-box' }, spinner(), h('p', null, `${message} Retrying…`)));
          retryTimer = setTimeout(() => { if (stream.status === 'active') startPlayer(); }, 3000);
        },
      });
    } catch (err) {
      setOverlay(h('div', { class: 'overlay-box' }, h('p', null, err.message)));
    }
  };
  ctx.onLeave(() => { stopPlayer(); clearTimeout(recordingTimer); });

  const drawInfo = () => {
    title.textContent = stream.title || stream.name;
    ctx.setTitle(stream.title || stream.name);
    badge.replaceChildren(statusBadge(stream.status));
    viewers.replaceChildren(stream.status === 'active' || stream.status === 'waiting'
      ? h('span', { class: 'viewers' }, icon('eye'), ` ${plural(stream.viewer_count || 0, 'viewer')}`) : '');
    fill(meta, h('span', { class: 'watch-user' }, stream.username),
      stream.start_time ? h('span', null, ` · started ${timeAgo(stream.start_time)}`) : null,
      stream.status === 'stopped' && stream.duration_seconds ? h('span', null, ` · lasted ${fmtDuration(stream.duration_seconds)}`) : null);
    description.textContent = stream.description || '';
    description.hidden = !stream.description;
  };

  const playRecording = () => {
    stopPlayer();
    playingRecording = true;
    setOverlay();
    player = playFile(video, base('vod') + recording.file_path);
    drawEnded();
    video.focus();
  };

  const drawEnded = () => {
    endedBox.hidden = false;
    const ready = recording && recording !== 'none' && recording.status === 'ready';
    let state;
    if (recording === null || (recording !== 'none' && recording.status === 'processing')) {
      state = h('p', { class: 'recording-state' }, spinner(), ' The recording is being prepared; it will be offered here when it is ready.');
    } else if (recording === 'none') {
      state = h('p', { class: 'recording-state' }, 'Nothing was recorded (no video reached the server).');
    } else if (recording.status === 'failed') {
      state = h('p', { class: 'recording-state' }, `The recording could not be made${recording.error ? `: ${recording.error}` : '.'}`);
    } else {
      state = h('p', { class: 'recording-state' }, playingRecording ? 'You are watching the recording.' : 'The recording is ready.');
    }
    fill(endedBox,
      h('div', null, h('h2', null, 'This stream has ended'), state),
      ready ? h('a', { class: 'btn', href: `/library?play=${encodeURIComponent(stream.stream_id)}` }, icon('film'), 'Open in the library') : null);
    if (playingRecording) return;
    // What to do next goes where the viewer is looking: on the player.
    const overlayParts = [h('p', { class: 'overlay-title' }, 'The stream has ended.')];
    if (ready) {
      const watchButton = h('button', { class: 'btn btn-primary', type: 'button', dataset: { action: 'play-recording' } },
        icon('play'), `Watch the recording (${fmtDuration(recording.duration_seconds)})`);
      watchButton.addEventListener('click', playRecording);
      overlayParts.push(watchButton);
    } else if (recording === null || (recording !== 'none' && recording.status === 'processing')) {
      overlayParts.push(h('p', { class: 'muted' }, 'Its recording is being prepared…'));
    }
    setOverlay(h('div', { class: 'overlay-box' }, ...overlayParts));
  };

  const checkRecording = async () => {
    clearTimeout(recordingTimer);
    try {
      recording = await api('vod', `/api/v1/recordings/${encodeURIComponent(id)}`, { signal: ctx.signal });
    } catch (err) {
      if (err.name === 'AbortError') return;
      // The recording row exists as soon as a stop returns, so a 404 after that means none.
      if (err.status === 404) recording = 'none';
      else recording = null;
    }
    if (!ctx.isCurrent()) return;
    drawEnded();
    if (recording === null || (recording !== 'none' && recording.status === 'processing')) {
      recordingTimer = setTimeout(checkRecording, live.connected ? 15_000 : 3000);
    }
  };

  const apply = () => {
    drawInfo();
    if (stream.status === 'active') {
      everLive = true;
      startPlayer();
    } else if (stream.status === 'waiting') {
      if (!player) {
        setOverlay(h('div', { class: 'overlay-box' }, spinner(), h('p', null, everLive
          ? 'The streamer’s connection dropped. Waiting for them to come back…'
          : 'Waiting for the streamer to connect…')));
      }
    } else if (stream.status === 'created') {
      setOverlay(h('div', { class: 'overlay-box' }, h('p', null, 'This stream has not started yet.')));
    } else if (stream.status === 'stopped') {
      if (!playingRecording) stopPlayer();
      if (recording === null && !recordingTimer) checkRecording();
      else drawEnded();
    }
  };

  const subscription = live.watchStreams([id]);
  ctx.onLeave(() => subscription.drop());
  const poller = poll(ctx, async () => {
    // A stopped stream never comes back; one last fetch brings its final duration.
    if (stream.status === 'stopped' && stream.stop_time) return;
    try {
      const fresh = await api('main', `/api/streams/${encodeURIComponent(id)}`, { auth: true, signal: ctx.signal });
      stream = { ...stream, ...fresh };
      apply();
    } catch (err) {
      if (err.name === 'AbortError' || err.status === 401) return;
      if (err.status === 404) {
        stream.status = 'stopped';
        apply();
      }
    }
  }, { fast: 4000, slow: 20_000 });

  const off = live.onMessage((msg) => {
    if (msg.stream_id !== id) return;
    if (msg.type === 'stream_status' && msg.status) {
      stream.status = msg.status;
      apply();
      poller.now();
    } else if (msg.type === 'viewer_count') {
      stream.viewer_count = msg.count;
      drawInfo();
    } else if (msg.type === 'recording_ready' || msg.type === 'recording_failed') {
      checkRecording();
    }
  });
  ctx.onLeave(off);

  ctx.root.replaceChildren(h('div', { class: 'watch' },
    playerBox,
    h('section', { class: 'watch-info' },
      h('div', { class: 'watch-head' }, title, h('div', { class: 'watch-status' }, badge, viewers)),
      meta, description),
    endedBox));
  apply();
}

function notFound(ctx) {
  ctx.setTitle('Stream not found');
  ctx.root.replaceChildren(h('section', { class: 'empty' },
    h('h1', null, 'Stream not found'),
    h('p', null, 'It may have been deleted. Its recording, if there was one, may still be in the library.'),
    h('div', { class: 'actions' }, h('a', { href: '/', class: 'btn btn-primary' }, 'See who is live'), h('a', { href: '/library', class: 'btn' }, 'Open the library'))));
}
