// Where the four services live. The Main App serves this page; the others listen on their own
// ports of the same host, which GET /app-config.json names.

const LABELS = {
  auth: 'sign-in service',
  main: 'main app',
  stream: 'live video service',
  vod: 'recordings service',
};

let config = null;

/** Fetch /app-config.json once; every other module reads the result through `cfg()`. */
export async function loadConfig() {
  const res = await fetch('/app-config.json', { cache: 'no-cache' });
  if (!res.ok) throw new Error(`Could not load /app-config.json (HTTP ${res.status})`);
  config = await res.json();
  return config;
}

export function cfg() {
  if (!config) throw new Error('app config not loaded yet');
  return config;
}

/** http(s)://<this host>:<port of service>, e.g. base('vod') -> "http://localhost:8081". */
export function base(service) {
  const port = cfg()[`${service}_port`];
  return `${location.protocol}//${location.hostname}:${port}`;
}

export function wsUrl() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.hostname}:${cfg().main_port}/ws`;
}

export function serviceLabel(service) {
  return LABELS[service] || service;
}
