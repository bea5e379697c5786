"""Who may use the server, and which requests may change anything.

- Host check: only the Host names the server was bound for are answered (``TRUSTED_HOSTS``),
  so a web page cannot reach a localhost server through DNS rebinding.
- Token (``API_TOKEN``, from ``dinoret serve --token``): when set, every route needs it, as
  ``Authorization: Bearer <token>`` (API clients) or a browser session that proved it once
  (the login form, or a link with ``?token=`` as ``dinoret serve`` prints it).
- CSRF: every request with an unsafe method must carry the session's CSRF token (form field
  ``csrf_token`` or header ``X-CSRF-Token``) or a valid bearer token, which a browser never
  attaches on its own. Views that only read (``POST /api/search`` carries an upload, it
  changes nothing) are marked with :func:`read_only`.
- Session cookie: ``SameSite=Strict``, HttpOnly, signed with a key made at server start.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from urllib.parse import urlencode

from flask import Flask, abort, current_app, redirect, request, session

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOGIN_ENDPOINT = "pages.login"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


def read_only(view: Callable) -> Callable:
    """Mark a view that takes POST only to receive a body and changes no state: no CSRF token needed."""
    view.read_only = True
    return view


def csrf_token() -> str:
    """This session's CSRF token (made on first use); templates put it in every form."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def _same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


def _token_proof(token: str) -> str:
    # Stored in the session instead of the token itself: the cookie is signed, not encrypted.
    return hashlib.sha256(b"dinoret-login:" + token.encode()).hexdigest()


def bearer_ok() -> bool:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and _same(value.strip(), current_app.config["API_TOKEN"])


def login(token: str) -> bool:
    """Check ``token``; if it is right, remember in the session that this browser proved it."""
    if not _same(token, current_app.config["API_TOKEN"]):
        return False
    session["auth"] = _token_proof(token)
    return True


def _authenticated() -> bool:
    token = current_app.config["API_TOKEN"]
    return not token or bearer_ok() or _same(session.get("auth"), _token_proof(token))


def _check_request():
    token = current_app.config["API_TOKEN"]
    if token and request.method in SAFE_METHODS and "token" in request.args and not request.path.startswith("/api/"):
        # The link ``dinoret serve`` prints: log in, then drop the token from the address bar.
        if not login(request.args["token"]):
            abort(401)
        rest = {k: v for k, v in request.args.items(multi=True) if k != "token"}
        return redirect(request.path + ("?" + urlencode(rest) if rest else ""), 303)
    if not _authenticated() and request.endpoint != LOGIN_ENDPOINT:
        abort(401)
    if request.method not in SAFE_METHODS and request.routing_exception is None:
        view = current_app.view_functions.get(request.endpoint)
        if getattr(view, "read_only", False) or (token and bearer_ok()):
            return None
        sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token")
        if not _same(sent, session.get("csrf")):
            abort(403, description="missing or wrong CSRF token (reload the page and try again)")
    return None


def _security_headers(response):
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path.startswith("/api/") and response.mimetype == "application/json":
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def trusted_hosts(host: str) -> list[str] | None:
    """Host names a server bound to ``host`` answers to; None (any) when bound to every interface."""
    if host in ("0.0.0.0", "::", ""):
        return None
    names = ["localhost", "127.0.0.1"]
    return names if host in names else [*names, host]


def init_app(app: Flask) -> None:
    if not app.config.get("SECRET_KEY"):
        # Made at each start: sessions (logins, CSRF tokens) end when the server restarts.
        app.config["SECRET_KEY"] = secrets.token_bytes(32)
    app.config.update(SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_HTTPONLY=True)
    app.before_request(_check_request)
    app.after_request(_security_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token
