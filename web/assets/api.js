// JSON API calls (same origin, cookie credentials). A 401 anywhere calls the
// registered handler (the app shows the login form).

let onUnauthorized = () => {};

/** Registers what happens on a 401. */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

/** An API failure: HTTP status and the server's `error` message. */
export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

/**
 * Calls the API; resolves to the parsed JSON (or null for 204), rejects with ApiError.
 * opts: {method, body (object → JSON), headers, quiet401 (don't trigger login)}
 */
export async function api(path, opts = {}) {
  const headers = { Accept: 'application/json', ...(opts.headers || {}) };
  let body;
  if (opts.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(opts.body);
  }
  let res;
  try {
    res = await fetch(path, { method: opts.method || 'GET', headers, body, credentials: 'same-origin', cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, `network error: ${e.message}`);
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!res.ok) {
    const message = (data && typeof data.error === 'string') ? data.error : `${res.status} ${res.statusText || 'error'}`;
    if (res.status === 401 && !opts.quiet401) onUnauthorized();
    throw new ApiError(res.status, message, data);
  }
  return data;
}

/**
 * The session: {authRequired, authenticated, actor}. A server without auth
 * (404 on /api/session) counts as "no auth needed".
 */
export async function getSession() {
  try {
    const s = await api('/api/session', { quiet401: true });
    return {
      authRequired: !!(s && s.authRequired),
      authenticated: !!(s && s.authenticated),
      actor: (s && typeof s.actor === 'string') ? s.actor : null,
    };
  } catch (e) {
    if (e.status === 404 || e.status === 405) return { authRequired: false, authenticated: true, actor: null };
    if (e.status === 401) return { authRequired: true, authenticated: false, actor: null };
    throw e;
  }
}

/** POST /api/session {token} → 204 and a session cookie. */
export function login(token) {
  return api('/api/session', { method: 'POST', body: { token }, quiet401: true });
}

/** DELETE /api/session. */
export function logout() {
  return api('/api/session', { method: 'DELETE', quiet401: true });
}

export const enc = encodeURIComponent;
