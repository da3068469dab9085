// Live updates: one WebSocket to the Main App's /ws for the whole tab, and REST polling that
// speeds up whenever the socket is not open (not deployed, refused, or reconnecting), so every
// page stays current either way.
//
// Protocol (ws://host:main_port/ws?token=<access token>):
//   server -> {"type":"stream_status","stream_id","status"}
//             {"type":"viewer_count","stream_id","count"}
//             {"type":"recording_ready","stream_id",...}
//             {"type":"recording_failed","stream_id","reason"}
//   client -> {"type":"subscribe","stream_ids":[...]}
//             {"type":"subscribe","all":true}   (every stream; the server's default)
//   close code 4401: the token was not accepted.

import { wsUrl } from './config.js';
import { getSession, onSessionChange, refresh } from './session.js';

const MAX_BACKOFF_MS = 60_000;

class LiveHub {
  constructor() {
    this.ws = null;
    this.connected = false;
    this.failures = 0;
    this.retryTimer = null;
    this.handlers = new Set();
    this.connectionHandlers = new Set();
    this.interests = new Map(); // token -> Set of stream ids
    this.nextInterest = 1;
    this.token = null;
  }

  start() {
    document.documentElement.dataset.liveUpdates = 'polling';
    onSessionChange((session) => {
      if (!session) this.close();
      else if (!this.ws && !this.retryTimer) this.connect();
    });
    this.connect();
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const session = getSession();
    if (!session || this.ws) return;
    this.token = session.access_token;
    let ws;
    try {
      ws = new WebSocket(`${wsUrl()}?token=${encodeURIComponent(this.token)}`);
    } catch {
      this.retry();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.connected = true;
      this.failures = 0;
      this.sendSubscription();
      this.emitConnection();
    };
    ws.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch { return; }
      if (!message || typeof message.type !== 'string') return;
      for (const fn of this.handlers) {
        try { fn(message); } catch (err) { console.error(err); }
      }
    };
    ws.onclose = (event) => {
      const wasConnected = this.connected;
      this.ws = null;
      this.connected = false;
      if (wasConnected) this.emitConnection();
      if (!getSession()) return;
      if (event.code === 4401) {
        // Expired or revoked token: renew it (refresh() logs out if it cannot) and try again.
        refresh(this.token).then(() => this.retry(), () => {});
        return;
      }
      this.retry();
    };
  }

  retry() {
    this.failures += 1;
    const backoff = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** Math.min(this.failures, 6));
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.connect();
    }, backoff * (0.75 + Math.random() / 2));
  }

  close() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close(1000);
      this.ws = null;
    }
    if (this.connected) {
      this.connected = false;
      this.emitConnection();
    }
  }

  emitConnection() {
    // Visible to tests and curious users in the inspector: how this page learns of changes.
    document.documentElement.dataset.liveUpdates = this.connected ? 'socket' : 'polling';
    for (const fn of this.connectionHandlers) {
      try { fn(this.connected); } catch (err) { console.error(err); }
    }
  }

  sendSubscription() {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    const ids = new Set();
    let all = false;
    for (const set of this.interests.values()) {
      if (set === 'all') all = true;
      else for (const id of set) ids.add(id);
    }
    this.ws.send(JSON.stringify(all ? { type: 'subscribe', all: true } : { type: 'subscribe', stream_ids: [...ids] }));
  }

  /** Receive every message; returns an unsubscribe function. */
  onMessage(fn) {
    this.handlers.add(fn);
    return () => this.handlers.delete(fn);
  }

  /** Be told when the socket opens or closes; returns an unsubscribe function. */
  onConnection(fn) {
    this.connectionHandlers.add(fn);
    return () => this.connectionHandlers.delete(fn);
  }

  /** Ask for updates about these streams (or 'all'); returns {set(ids), drop()}. */
  watchStreams(ids = []) {
    const key = this.nextInterest++;
    const norm = (v) => (v === 'all' ? 'all' : new Set(v));
    const sig = (v) => (v === 'all' ? 'all' : [...v].sort().join());
    this.interests.set(key, norm(ids));
    this.sendSubscription();
    return {
      set: (next) => {
        const before = sig(this.interests.get(key) || new Set());
        this.interests.set(key, norm(next));
        if (sig(this.interests.get(key)) !== before) this.sendSubscription();
      },
      drop: () => {
        this.interests.delete(key);
        this.sendSubscription();
      },
    };
  }
}

export const live = new LiveHub();

/**
 * Run `fn` now and then again and again until the page is left: every `fast` ms while the
 * WebSocket is down, every `slow` ms while it is up (a safety net), and at once when it drops.
 * `fn` handles its own errors. Returns {now()} to run it early (e.g. after a button press).
 */
export function poll(ctx, fn, { fast = 4000, slow = 30_000 } = {}) {
  let timer = null;
  let running = false;
  let stopped = false;
  const interval = () => {
    const base = live.connected ? slow : fast;
    return document.visibilityState === 'hidden' ? Math.max(base, 15_000) : base;
  };
  const run = async () => {
    clearTimeout(timer);
    if (stopped || running) return;
    running = true;
    try {
      await fn();
    } catch (err) {
      console.error(err);
    } finally {
      running = false;
      if (!stopped) timer = setTimeout(run, interval());
    }
  };
  const offConnection = live.onConnection((connected) => {
    if (!connected) run();
  });
  const onVisible = () => { if (document.visibilityState === 'visible') run(); };
  document.addEventListener('visibilitychange', onVisible);
  ctx.onLeave(() => {
    stopped = true;
    clearTimeout(timer);
    offConnection();
    document.removeEventListener('visibilitychange', onVisible);
  });
  run();
  return { now: run };
}
