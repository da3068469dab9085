// Log in with email and password.

import { api, ApiError } from '../api.js';
import { navigate } from '../router.js';
import { canStream, currentUser, saveTokens } from '../session.js';
import { clearFieldErrors, errorBox, field, h, notice, showFieldErrors, withBusy } from '../ui.js';

/** Where to go after signing in: the page that sent us here, else the user's natural home. */
export function afterLogin(query, user) {
  const next = query.get('next');
  if (next && next.startsWith('/') && !next.startsWith('//') && !next.startsWith('/login') && !next.startsWith('/register')) return next;
  return canStream(user) ? '/dashboard' : '/';
}

export async function render(ctx) {
  ctx.setTitle('Log in');
  const flash = sessionStorage.getItem('streamplat.flash');
  sessionStorage.removeItem('streamplat.flash');

  const user = currentUser();
  if (user) {
    ctx.root.replaceChildren(h('section', { class: 'auth-card card' },
      h('h1', null, 'You are logged in'),
      h('p', null, `Signed in as ${user.username}.`),
      h('div', { class: 'actions' },
        h('a', { href: afterLogin(ctx.query, user), class: 'btn btn-primary' }, 'Continue'))));
    return;
  }

  const email = h('input', { name: 'email', type: 'email', autocomplete: 'email', required: true, inputmode: 'email' });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const submit = h('button', { class: 'btn btn-primary btn-block', type: 'submit' }, 'Log in');
  const status = h('div', { class: 'form-status' });
  const form = h('form', { class: 'form', novalidate: true },
    field('Email', email),
    field('Password', password),
    status,
    submit);

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    status.replaceChildren();
    await withBusy(submit, 'Logging in…', async () => {
      try {
        const pair = await api('auth', '/auth/login', { method: 'POST', body: { email: email.value.trim(), password: password.value } });
        saveTokens(pair);
        navigate(afterLogin(ctx.query, pair.user), { replace: true });
      } catch (err) {
        if (err instanceof ApiError && err.status === 422 && err.details) {
          const rest = showFieldErrors(form, err.details);
          if (rest.length) status.replaceChildren(notice(rest.join('. '), 'error'));
        } else {
          status.replaceChildren(errorBox(err));
          password.select();
        }
      }
    });
  });

  const registerLink = h('a', { href: `/register${ctx.query.get('next') ? `?next=${encodeURIComponent(ctx.query.get('next'))}` : ''}` }, 'Create one');
  ctx.root.replaceChildren(h('section', { class: 'auth-card card' },
    h('h1', null, 'Log in'),
    h('p', { class: 'muted' }, 'Watch live streams, go live yourself and find past broadcasts.'),
    flash ? notice(flash, 'info') : null,
    form,
    h('p', { class: 'auth-switch' }, 'No account yet? ', registerLink)));
  email.focus();
}
