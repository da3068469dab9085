// Client-side routes. The server answers index.html for each of these paths, so a reload or a
// shared link lands on the same page.

import { loadingBlock, h } from './ui.js';
import { getSession } from './session.js';

const routes = [];
let leaveCurrent = () => {};
let renderSeq = 0;
let afterRender = () => {};

/** Register a page: `pattern` is a path like '/watch/:id'; `load` returns the page module. */
export function route(pattern, load) {
  const names = [];
  const regex = new RegExp(`^${pattern.replace(/:(\w+)/g, (_, name) => { names.push(name); return '([^/]+)'; })}/?$`);
  routes.push({ regex, names, load });
}

export function onRendered(fn) {
  afterRender = fn;
}

export function navigate(to, { replace = false } = {}) {
  const url = new URL(to, location.href);
  if (url.pathname + url.search === location.pathname + location.search && !replace) {
    render();
    return;
  }
  history[replace ? 'replaceState' : 'pushState'](null, '', url.pathname + url.search + url.hash);
  render();
}

/** Send the visitor to the login page, to come back here afterwards. */
export function toLogin(message) {
  const here = location.pathname + location.search;
  const next = here.startsWith('/login') || here.startsWith('/register') ? '/' : here;
  if (message) sessionStorage.setItem('streamplat.flash', message);
  navigate(`/login?next=${encodeURIComponent(next)}`, { replace: true });
}

/** The page's guard: true if signed in, else off to login (and false). */
export function requireLogin() {
  if (getSession()) return true;
  toLogin('Please log in to see this page.');
  return false;
}

export function isAppPath(pathname) {
  return routes.some((r) => r.regex.test(pathname));
}

export async function render() {
  const seq = ++renderSeq;
  leaveCurrent();
  const controller = new AbortController();
  const cleanups = [];
  leaveCurrent = () => {
    controller.abort();
    for (const fn of cleanups.splice(0).reverse()) {
      try { fn(); } catch (err) { console.error(err); }
    }
  };
  const root = document.getElementById('main');
  const url = new URL(location.href);
  let match = null;
  let params = {};
  for (const r of routes) {
    const m = r.regex.exec(url.pathname);
    if (m) {
      match = r;
      params = Object.fromEntries(r.names.map((name, i) => [name, decodeURIComponent(m[i + 1])]));
      break;
    }
  }
  const ctx = {
    root,
    params,
    query: url.searchParams,
    signal: controller.signal,
    isCurrent: () => seq === renderSeq,
    onLeave: (fn) => cleanups.push(fn),
    setTitle: (title) => { document.title = title ? `${title} · streamplat` : 'streamplat'; },
  };
  root.replaceChildren(loadingBlock());
  root.setAttribute('aria-busy', 'true');
  try {
    if (!match) {
      ctx.setTitle('Not found');
      root.replaceChildren(h('section', { class: 'empty' }, h('h1', null, 'Page not found'),
        h('p', null, 'There is nothing at this address. '), h('a', { href: '/', class: 'btn btn-primary' }, 'Go to the home page')));
    } else {
      const page = await match.load();
      if (seq !== renderSeq) return;
      await page.render(ctx);
    }
  } catch (err) {
    if (err && err.name === 'AbortError') return;
    console.error(err);
    if (seq === renderSeq) {
      root.replaceChildren(h('div', { class: 'alert alert-error', role: 'alert' },
        h('strong', null, 'This page failed to load'), h('span', null, (err && err.message) || String(err))));
    }
  } finally {
    if (seq === renderSeq) {
      root.removeAttribute('aria-busy');
      afterRender(url.pathname);
    }
  }
}

export function startRouter() {
  document.addEventListener('click', (event) => {
    if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    const a = event.target.closest('a[href]');
    if (!a || a.target || a.hasAttribute('download')) return;
    const url = new URL(a.href, location.href);
    if (url.origin !== location.origin || !isAppPath(url.pathname)) return;
    event.preventDefault();
    navigate(url.pathname + url.search);
    window.scrollTo(0, 0);
  });
  window.addEventListener('popstate', () => render());
  return render();
}
