// The page's side of the JSON API (/api/v1): the session's CSRF token, JSON requests that
// carry it, and the errors the API answers ({error, errors: [{key, message}]}).

const BASE = '/api/v1';

/** An API reply that was not a success: status, the API's message, per-key errors. */
export class ApiFailure extends Error {
  constructor(status, body, retryAfter) {
    super(body && body.error ? body.error : `the appliance answered ${status}`);
    this.status = status;
    this.errors = (body && Array.isArray(body.errors)) ? body.errors : [];
    // Seconds to wait (Retry-After), or null.
    this.retryAfter = retryAfter;
  }
}

let csrfToken = null;

/** GET /session: {authenticated, setup_required, csrf_token}; keeps the CSRF token. */
export async function session() {
  const resp = await fetch(`${BASE}/session`, { cache: 'no-store' });
  const body = await resp.json();
  csrfToken = body.csrf_token || null;
  return body;
}

/** Remember the token a login or setup answered with. */
export function setCsrf(token) {
  csrfToken = token;
}

/** The CSRF header for a state-changing request of this page's session. */
export async function csrfHeaders() {
  if (!csrfToken) await session();
  return knownCsrfHeaders();
}

/** The same, at once, from what is known already (for a request sent as the page unloads). */
export function knownCsrfHeaders() {
  return csrfToken ? { 'X-CSRF-Token': csrfToken } : {};
}

/**
 * A JSON request to the API. Resolves with the parsed reply; rejects with ApiFailure.
 * A 401 on a page that needs a login sends the browser to the login page.
 * @param {string} method
 * @param {string} path under /api/v1, e.g. '/config'
 * @param {*} [body] sent as JSON
 * @param {{redirectOn401?: boolean}} [opts]
 */
export async function api(method, path, body, opts = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && method !== 'HEAD') Object.assign(headers, await csrfHeaders());
  const resp = await fetch(BASE + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
  const text = await resp.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (resp.ok) return parsed;
  const wait = Number.parseInt(resp.headers.get('Retry-After') || '', 10);
  const failure = new ApiFailure(resp.status, parsed, Number.isFinite(wait) ? wait : null);
  if (resp.status === 401 && opts.redirectOn401 !== false) toLogin();
  throw failure;
}

/** Off to the login page (or the first-run setup, which /login redirects to). */
export function toLogin() {
  location.assign('/login');
}

/** End the session and go to the login page. */
export async function logout() {
  try {
    await api('POST', '/logout', undefined, { redirectOn401: false });
  } finally {
    csrfToken = null;
    toLogin();
  }
}
