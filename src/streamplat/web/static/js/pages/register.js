// Sign up: create an account (viewer or streamer), then log straight in.

import { api, ApiError } from '../api.js';
import { navigate } from '../router.js';
import { currentUser, saveTokens } from '../session.js';
import { clearFieldErrors, errorBox, field, h, notice, showFieldErrors, withBusy } from '../ui.js';
import { afterLogin } from './login.js';

function roleOption(value, title, text, checked) {
  return h('label', { class: 'role-option' },
    h('input', { type: 'radio', name: 'role', value, checked }),
    h('span', { class: 'role-option-body' }, h('strong', null, title), h('span', null, text)));
}

export async function render(ctx) {
  ctx.setTitle('Sign up');
  const user = currentUser();
  if (user) {
    ctx.root.replaceChildren(h('section', { class: 'auth-card card' },
      h('h1', null, 'You already have an account'),
      h('p', null, `Signed in as ${user.username}. Log out first to create another account.`),
      h('div', { class: 'actions' }, h('a', { href: afterLogin(ctx.query, user), class: 'btn btn-primary' }, 'Continue'))));
    return;
  }

  const username = h('input', { name: 'username', autocomplete: 'username', required: true, minlength: 3, maxlength: 32, spellcheck: 'false', autocapitalize: 'off' });
  const email = h('input', { name: 'email', type: 'email', autocomplete: 'email', required: true, inputmode: 'email' });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'new-password', required: true, minlength: 6 });
  const roles = h('fieldset', { class: 'field role-choice' },
    h('legend', null, 'I want to'),
    roleOption('viewer', 'Watch', 'Watch live streams and recordings', true),
    roleOption('streamer', 'Stream', 'Go live from OBS and keep recordings', false),
    h('p', { class: 'field-error', dataset: { errorFor: 'role' }, hidden: true }));
  const submit = h('button', { class: 'btn btn-primary btn-block', type: 'submit' }, 'Create account');
  const status = h('div', { class: 'form-status' });
  const form = h('form', { class: 'form', novalidate: true },
    field('Username', username, '3–32 letters, digits, _ . -'),
    field('Email', email),
    field('Password', password, 'At least 6 characters'),
    roles,
    status,
    submit);

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    status.replaceChildren();
    const role = form.querySelector('input[name="role"]:checked').value;
    const body = { username: username.value.trim(), email: email.value.trim(), password: password.value, role };
    await withBusy(submit, 'Creating account…', async () => {
      try {
        await api('auth', '/auth/register', { method: 'POST', body });
      } catch (err) {
        if (err instanceof ApiError && err.status === 422 && err.details) {
          const rest = showFieldErrors(form, err.details);
          status.replaceChildren(notice(rest.length ? rest.join('. ') : 'Please fix the fields marked below.', 'error'));
        } else if (err instanceof ApiError && err.status === 409 && /email|username/i.test(err.message)) {
          // "Email already registered" / "Username already taken" belong next to their field.
          showFieldErrors(form, { [/email/i.test(err.message) ? 'email' : 'username']: [err.message] });
        } else {
          status.replaceChildren(errorBox(err));
        }
        return;
      }
      try {
        const pair = await api('auth', '/auth/login', { method: 'POST', body: { email: body.email, password: body.password } });
        saveTokens(pair);
        navigate(afterLogin(ctx.query, pair.user), { replace: true });
      } catch (err) {
        // The account exists; only the automatic login failed (e.g. rate limited).
        sessionStorage.setItem('streamplat.flash', `Your account was created, but logging in failed: ${err.message}`);
        navigate('/login', { replace: true });
      }
    });
  });

  ctx.root.replaceChildren(h('section', { class: 'auth-card card' },
    h('h1', null, 'Create an account'),
    h('p', { class: 'muted' }, 'Free, and on your own server.'),
    form,
    h('p', { class: 'auth-switch' }, 'Already have an account? ', h('a', { href: '/login' }, 'Log in'))));
  username.focus();
}
