// One way to call the API on any port: JSON in, JSON out, and every failure turned into an
// ApiError carrying the API's error body ({error, message, code} + details on 422) or, when the
// service cannot be reached, a message saying which one.

import { base, serviceLabel } from './config.js';
import { expiresSoon, getSession, refresh } from './session.js';

export class ApiError extends Error {
  constructor(status, body = {}) {
    super(body.message || `Request failed (HTTP ${status})`);
    this.status = status;
    this.error = body.error || (status ? `HTTP ${status}` : 'Network error');
    this.details = body.details || null;
  }
}

// Set by the router: what to do when the session cannot be renewed (go to the login page).
let onSignedOut = () => {};
export function setSignedOutHandler(fn) {
  onSignedOut = fn;
}

function signedOut(message) {
  onSignedOut(message);
  return new ApiError(401, { error: 'Unauthorized', message });
}

async function validToken() {
  let session = getSession();
  if (!session) throw signedOut('Please log in to continue.');
  if (expiresSoon(session)) {
    try {
      session = await refresh(session.access_token);
    } catch (err) {
      if (err.status === 0) throw new ApiError(0, { message: err.message });
      throw signedOut(err.message);
    }
  }
  return session.access_token;
}

/**
 * Call `service` ('auth' | 'main' | 'stream' | 'vod') at `path`.
 * Options: method, body (sent as JSON), query (object; null/undefined values are left out),
 * auth (true: send the access token, renew it once on 401, else go to login), signal.
 * Resolves to the parsed JSON body; rejects with ApiError.
 */
export async function api(service, path, { method = 'GET', body, query, auth = false, signal } = {}) {
  const url = new URL(base(service) + path);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, String(v));
  }
  const send = async (token) => {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (token) headers.Authorization = `Bearer ${token}`;
    try {
      return await fetch(url, {
        method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      if (err.name === 'AbortError') throw err;
      throw new ApiError(0, {
        error: 'Network error',
        message: `Could not reach the ${serviceLabel(service)} at ${base(service)}. Is the server running?`,
      });
    }
  };

  let token = auth ? await validToken() : null;
  let res = await send(token);
  if (res.status === 401 && auth) {
    // The token may have been revoked or the clock moved on: renew once, then give up.
    try {
      token = (await refresh(token)).access_token;
    } catch (err) {
      if (err.status === 0) throw new ApiError(0, { message: err.message });
      throw signedOut('Your session has expired. Please log in again.');
    }
    res = await send(token);
    if (res.status === 401) throw signedOut('Your session has expired. Please log in again.');
  }
  return parse(res);
}

async function parse(res) {
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (res.ok) return data;
  if (data && typeof data === 'object' && data.message) throw new ApiError(res.status, data);
  throw new ApiError(res.status, { message: `${res.status} ${res.statusText || 'Request failed'}` });
}

/** The message to show for any error (ApiError or not). */
export function messageOf(err) {
  if (err instanceof ApiError) return err.message;
  return (err && err.message) || String(err);
}
