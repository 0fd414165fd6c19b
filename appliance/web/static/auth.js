// The login page (/login) and the first-run setup page (/setup): one form each, the
// API's refusals shown as sentences (too short, wrong password, locked out for N s with
// a countdown), then on to the dashboard.

import { api, ApiFailure, session } from './api.js';

const $ = (id) => document.getElementById(id);
const message = $('message');
const button = $('submit');
const password = $('password');

function say(text, invalid = true) {
  message.textContent = text;
  password.setAttribute('aria-invalid', invalid ? 'true' : 'false');
}

function errorText(err) {
  if (!(err instanceof ApiFailure)) return 'Cannot reach the appliance: check the network and try again.';
  const detail = err.errors.find((e) => e.message);
  return detail ? `${err.message}: ${detail.message}` : err.message;
}

// A refused login may carry Retry-After: the button stays off and the wait counts down.
let countdown = 0;
let locked = false;
function lockFor(seconds, why) {
  clearInterval(countdown);
  let left = seconds;
  locked = true;
  button.disabled = true;
  const tick = () => {
    if (left <= 0) {
      clearInterval(countdown);
      locked = false;
      button.disabled = false;
      say(`${why} You can try again now.`);
      return;
    }
    say(`${why} Try again in ${left} s.`);
    left--;
  };
  tick();
  countdown = setInterval(tick, 1000);
}

async function login(event) {
  event.preventDefault();
  if (!password.value) {
    say('Enter the admin password.');
    return;
  }
  button.disabled = true;
  say('', false);
  try {
    await api('POST', '/login', { password: password.value }, { redirectOn401: false });
    location.assign('/');
    return;
  } catch (err) {
    password.select();
    if (err instanceof ApiFailure && err.status === 409) {
      location.assign('/setup');
      return;
    }
    if (err instanceof ApiFailure && err.status === 401) {
      if (err.retryAfter) lockFor(err.retryAfter, 'Wrong password. Too many failed attempts from here.');
      else say('Wrong password.');
    } else if (err instanceof ApiFailure && err.status === 429 && err.retryAfter) {
      lockFor(err.retryAfter, 'Too many failed logins from here.');
    } else {
      say(errorText(err));
    }
  }
  if (!locked) button.disabled = false;
}

async function setup(event) {
  event.preventDefault();
  const min = Number(password.getAttribute('minlength')) || 10;
  const again = $('again');
  again.setAttribute('aria-invalid', 'false');
  if (password.value.length < min) {
    say(`Too short: the password needs at least ${min} characters (this one has ${password.value.length}).`);
    return;
  }
  if (password.value !== again.value) {
    say('The two passwords differ.', false);
    again.setAttribute('aria-invalid', 'true');
    return;
  }
  button.disabled = true;
  say('', false);
  try {
    await api('POST', '/setup', { password: password.value }, { redirectOn401: false });
    location.assign('/');
  } catch (err) {
    if (err instanceof ApiFailure && err.status === 409) {
      say('An admin password is set already: log in instead.', false);
      setTimeout(() => location.assign('/login'), 1500);
      return;
    }
    say(errorText(err));
    button.disabled = false;
  }
}

// Already logged in, or the other page is the one needed: go there at once.
async function route() {
  try {
    const s = await session();
    const onSetup = Boolean($('setup'));
    if (s.authenticated) location.replace('/');
    else if (s.setup_required && !onSetup) location.replace('/setup');
    else if (!s.setup_required && onSetup) location.replace('/login');
  } catch {
    // unreachable for now: the form still works once it is back
  }
}

if ($('login')) $('login').addEventListener('submit', login);
if ($('setup')) $('setup').addEventListener('submit', setup);
route();
