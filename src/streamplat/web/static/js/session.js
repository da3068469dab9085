// The signed-in user's tokens, kept in localStorage as the API spec suggests, and refreshed
// before they expire.
//
// A refresh token works once: POST /auth/refresh spends it and returns a new pair. Two tabs
// refreshing at the same moment would therefore log one of them out, so refreshes run under a
// Web Lock shared by every tab, and a tab that gets the lock after another tab refreshed simply
// adopts the new tokens from localStorage.

import { base } from './config.js';

const KEY = 'streamplat.session';
// Refresh this long before the access token expires (or a fifth of its lifetime if shorter).
const LEAD_MS = 60_000;
const RETRY_MS = 15_000;

let current = read();
let timer = null;
let inflight = null;
const listeners = new Set();

function read() {
  try {
    const s = JSON.parse(localStorage.getItem(KEY) || 'null');
    return s && s.access_token && s.refresh_token ? s : null;
  } catch {
    return null;
  }
}

function emit() {
  for (const fn of listeners) {
    try { fn(current); } catch (err) { console.error(err); }
  }
}

function write(session) {
  current = session;
  if (session) localStorage.setItem(KEY, JSON.stringify(session));
  else localStorage.removeItem(KEY);
  schedule();
  emit();
}

/** The current session {access_token, refresh_token, expires_at, expires_in, user} or null. */
export function getSession() {
  return current;
}

export function currentUser() {
  return current ? current.user : null;
}

export function canStream(user = currentUser()) {
  return !!user && (user.role === 'streamer' || user.role === 'admin');
}

/** Call `fn(session)` whenever the session changes (here or in another tab); returns an unsubscribe. */
export function onSessionChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** Store a login or refresh response (access_token, refresh_token, expires_in, user). */
export function saveTokens(pair) {
  write({
    access_token: pair.access_token,
    refresh_token: pair.refresh_token,
    expires_in: pair.expires_in,
    expires_at: Date.now() + pair.expires_in * 1000,
    user: pair.user,
  });
}

export function clearSession() {
  write(null);
}

function leadMs(session) {
  return Math.min(LEAD_MS, (session.expires_in || 3600) * 200);
}

/** Whether the access token is about to expire (refresh it before use). */
export function expiresSoon(session = current, marginMs = 10_000) {
  return !!session && session.expires_at - Date.now() < marginMs;
}

function schedule(delay) {
  clearTimeout(timer);
  timer = null;
  if (!current) return;
  const wait = delay ?? Math.max(1_000, current.expires_at - Date.now() - leadMs(current));
  // setTimeout's limit is 2^31-1 ms; a long token is looked at again later.
  timer = setTimeout(() => {
    refresh(current && current.access_token).catch((err) => {
      if (err.status === 0) schedule(RETRY_MS); // offline: try again soon
    });
  }, Math.min(wait, 2 ** 31 - 1));
}

/**
 * Exchange the refresh token for a new pair. `staleAccessToken` is the token the caller found
 * wanting; if another tab already replaced it, its tokens are adopted instead. Rejects with
 * {status: 401} when the refresh token is no longer valid (the session is then cleared) and
 * with {status: 0} when the sign-in service cannot be reached (the session is kept).
 */
export function refresh(staleAccessToken) {
  if (!inflight) {
    const run = () => doRefresh(staleAccessToken);
    const locked = navigator.locks ? navigator.locks.request('streamplat-refresh', run) : run();
    inflight = locked.finally(() => { inflight = null; });
  }
  return inflight;
}

async function doRefresh(staleAccessToken) {
  const stored = read();
  if (!stored) {
    write(null);
    throw Object.assign(new Error('Not signed in'), { status: 401 });
  }
  if (stored.access_token !== staleAccessToken && !expiresSoon(stored, leadMs(stored))) {
    // Another tab refreshed while we waited for the lock.
    current = stored;
    schedule();
    emit();
    return stored;
  }
  let res;
  try {
    res = await fetch(`${base('auth')}/auth/refresh`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ refresh_token: stored.refresh_token }),
    });
  } catch {
    throw Object.assign(new Error('Could not reach the sign-in service to renew your session'), { status: 0 });
  }
  if (res.ok) {
    saveTokens(await res.json());
    return current;
  }
  if (res.status >= 500 || res.status === 429) {
    throw Object.assign(new Error(`Could not renew your session (HTTP ${res.status})`), { status: 0 });
  }
  write(null);
  throw Object.assign(new Error('Your session has expired. Please log in again.'), { status: 401 });
}

/** Revoke the refresh token on the server (best effort) and forget the session here. */
export async function logout() {
  const s = current;
  write(null);
  if (!s) return;
  try {
    await fetch(`${base('auth')}/auth/logout`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ refresh_token: s.refresh_token }),
    });
  } catch {
    // The tokens are gone from this browser either way; the refresh token expires on its own.
  }
}

window.addEventListener('storage', (event) => {
  if (event.key !== KEY && event.key !== null) return;
  current = read();
  schedule();
  emit();
});

// Timers are throttled in background tabs; check again when the tab comes back.
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible' && current && expiresSoon(current, leadMs(current))) {
    refresh(current.access_token).catch(() => {});
  }
});

/** Start the refresh timer (once the app config, and so the sign-in service's port, is known). */
export function startSession() {
  current = read();
  schedule();
}
