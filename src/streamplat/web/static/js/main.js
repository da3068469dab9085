// The web app's entry point: load the port map, start the session and live updates, draw the
// header, and hand over to the router.

import { setSignedOutHandler } from './api.js';
import { loadConfig } from './config.js';
import { live } from './live.js';
import { navigate, onRendered, render, route, startRouter, toLogin } from './router.js';
import { canStream, currentUser, logout, onSessionChange, startSession } from './session.js';
import { h, toast } from './ui.js';

route('/', () => import('./pages/home.js'));
route('/login', () => import('./pages/login.js'));
route('/register', () => import('./pages/register.js'));
route('/dashboard', () => import('./pages/dashboard.js'));
route('/watch/:id', () => import('./pages/watch.js'));
route('/library', () => import('./pages/library.js'));

function navLink(href, text, current) {
  const active = href === '/' ? current === '/' || current.startsWith('/watch/') : current.startsWith(href);
  return h('a', { href, class: `nav-link${active ? ' active' : ''}`, 'aria-current': active ? 'page' : null }, text);
}

let loggingOut = false;

function drawHeader(pathname = location.pathname) {
  const user = currentUser();
  const nav = document.getElementById('nav');
  const links = [navLink('/', 'Live', pathname), navLink('/library', 'Library', pathname)];
  if (user) links.push(navLink('/dashboard', canStream(user) ? 'Dashboard' : 'My account', pathname));
  nav.replaceChildren(...links);
  const account = document.getElementById('account');
  if (user) {
    const out = h('button', { class: 'btn btn-small btn-ghost', type: 'button', dataset: { action: 'logout' } }, 'Log out');
    out.addEventListener('click', async () => {
      out.disabled = true;
      loggingOut = true;
      await logout();
      loggingOut = false;
      toast('You are logged out.', 'success');
      navigate('/login', { replace: true });
    });
    account.replaceChildren(
      h('span', { class: 'account-name', title: `Signed in as ${user.username} (${user.role})` },
        h('span', { class: 'avatar', 'aria-hidden': 'true' }, user.username.slice(0, 1).toUpperCase()),
        h('span', { class: 'account-username' }, user.username),
        h('span', { class: `role role-${user.role}` }, user.role)),
      out);
  } else {
    account.replaceChildren(
      h('a', { href: '/login', class: 'btn btn-small btn-ghost' }, 'Log in'),
      h('a', { href: '/register', class: 'btn btn-small btn-primary' }, 'Sign up'));
  }
}

async function boot() {
  try {
    await loadConfig();
  } catch (err) {
    document.getElementById('main').replaceChildren(
      h('div', { class: 'alert alert-error', role: 'alert' }, h('strong', null, 'The app cannot start'), h('span', null, err.message)));
    return;
  }
  startSession();
  setSignedOutHandler((message) => toLogin(message));
  let signedInAs = currentUser() && currentUser().id;
  onSessionChange(() => {
    drawHeader();
    const now = currentUser() && currentUser().id;
    if (now !== signedInAs) {
      // Logged in or out here or in another tab: what the page shows depends on who is looking.
      signedInAs = now;
      const onAuthPage = location.pathname === '/login' || location.pathname === '/register';
      if (!onAuthPage && !loggingOut) render();
    }
  });
  onRendered((pathname) => drawHeader(pathname));
  drawHeader();
  live.start();
  await startRouter();
}

boot();
