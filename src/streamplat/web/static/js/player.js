// Live HLS playback: hls.js wherever Media Source Extensions exist, the browser's own HLS where
// they do not (older iPhones). hls.js comes first even where canPlayType() claims native HLS:
// Chrome now answers "maybe" yet may fail on some streams (hls.js's README says as much), and
// hls.js tells us about errors and keeps the player near the live edge.

let hlsLoading = null;

/** Load the bundled hls.js (a classic script setting window.Hls) once, on first use. */
export function loadHls() {
  if (window.Hls) return Promise.resolve(window.Hls);
  if (!hlsLoading) {
    hlsLoading = new Promise((resolve, reject) => {
      const script = document.createElement('script');
      script.src = new URL('../vendor/hls.min.js', import.meta.url).href;
      script.async = true;
      script.onload = () => resolve(window.Hls);
      script.onerror = () => {
        hlsLoading = null;
        script.remove();
        reject(new Error('Could not load the video player (hls.min.js)'));
      };
      document.head.append(script);
    });
  }
  return hlsLoading;
}

function tryPlay(video) {
  const started = video.play();
  if (started && started.catch) {
    // Autoplay with sound is often refused; start muted and let the viewer unmute.
    started.catch(() => {
      if (!video.muted) {
        video.muted = true;
        video.play().catch(() => {});
      }
    });
  }
}

/**
 * Play the live playlist at `url` in `video`. `onFatal(message)` is called when playback
 * cannot go on (the caller decides whether to retry: the stream may just not be ready yet).
 * Returns {engine, destroy()}.
 */
export async function playLive(video, url, { onFatal = () => {}, onPlaying = () => {} } = {}) {
  let Hls = null;
  try {
    Hls = await loadHls();
  } catch (err) {
    if (!video.canPlayType('application/vnd.apple.mpegurl')) throw err;
  }
  video.addEventListener('playing', onPlaying);
  if (Hls && Hls.isSupported()) {
    const hls = new Hls({
      // LL-HLS: hls.js loads parts and aims at PART-HOLD-BACK (3 parts, 0.6 s) behind the live
      // edge, but it fixes its start position at the first playlist and then spends 0.5-1 s
      // starting (init, parts, transmuxer, seek), all of which it keeps at the default rate
      // of 1. Up to 1.5x it wins that back (and what a stall costs) while more than 1 s is
      // buffered (docs/design/ll-hls.md §3.13). No liveSync* setting here: any of them makes
      // hls.js ignore PART-HOLD-BACK and sit 3 segments behind.
      lowLatencyMode: true,
      maxLiveSyncPlaybackRate: 1.5,
      backBufferLength: 30,
      manifestLoadingMaxRetry: 3,
      levelLoadingMaxRetry: 6,
      fragLoadingMaxRetry: 6,
    });
    let recoveries = 0;
    hls.on(Hls.Events.ERROR, (_event, data) => {
      if (!data.fatal) return;
      if (data.type === Hls.ErrorTypes.MEDIA_ERROR && recoveries < 3) {
        recoveries += 1;
        hls.recoverMediaError();
        return;
      }
      const status = data.response && data.response.code;
      onFatal(status === 404 ? 'The live video is not available yet.' : `Playback stopped (${data.details}).`);
    });
    hls.on(Hls.Events.MANIFEST_PARSED, () => tryPlay(video));
    hls.loadSource(url);
    hls.attachMedia(video);
    return {
      engine: 'hls.js',
      destroy() {
        video.removeEventListener('playing', onPlaying);
        hls.destroy();
      },
    };
  }
  if (video.canPlayType('application/vnd.apple.mpegurl')) {
    const onError = () => onFatal('Playback stopped (the browser could not play the live video).');
    video.addEventListener('error', onError);
    video.src = url;
    tryPlay(video);
    return {
      engine: 'native',
      destroy() {
        video.removeEventListener('error', onError);
        video.removeEventListener('playing', onPlaying);
        video.removeAttribute('src');
        video.load();
      },
    };
  }
  throw new Error('This browser cannot play live video (it has neither Media Source Extensions nor HLS).');
}

/** Play a recording (plain MP4; the VOD service answers Range requests, so seeking works). */
export function playFile(video, url) {
  video.src = url;
  tryPlay(video);
  return {
    engine: 'file',
    destroy() {
      video.pause();
      video.removeAttribute('src');
      video.load();
    },
  };
}
