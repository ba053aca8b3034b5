"""The review web app (FastAPI + Jinja2 + one small vanilla-JS file, no build step).

Security, because model text is untrusted and verdicts gate training:
- Text is rendered by Jinja2 with autoescaping into <pre> blocks; nothing from the data is ever
  marked safe. The Content-Security-Policy allows scripts and styles from this server's /static
  only, so even an injected <script> or event-handler attribute would not run.
- On a loopback address the Host header must be a loopback name (no DNS rebinding), and a reviewer
  gives their name on the start page. On any other address each reviewer has their own token (kept
  in the review store, so it survives restarts); every request needs one (`?token=` once, then a
  cookie, or a bearer header), and a verdict is recorded under the token's owner, whatever name a
  request claims, so nobody can answer as someone else or invent reviewers to meet the gate.
- Requests that change verdicts are JSON POSTs carrying a per-server CSRF token from the page
  (a cross-site form can send neither) and, when the browser sends an Origin, the same origin.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import socket
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from rlaif.errors import ConfigError, InputError
from rlaif.review.stats import review_statistics
from rlaif.review.store import ReviewStore, check_reviewer_name

HERE = Path(__file__).resolve().parent
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
TOKEN_COOKIE, REVIEWER_COOKIE = "rlaif_token", "rlaif_reviewer"


class VerdictIn(BaseModel):
    item_id: int
    choice: str = Field(pattern="^(A|B|tie|both-bad)$")
    note: str | None = Field(None, max_length=2000)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(store_path: str | Path, *, host: str = "127.0.0.1", reviewers: list[str] | None = None,
               default_reviewer: str | None = None, min_agreement: float = 0.7, min_reviewed: int = 30) -> FastAPI:
    """The app over one review store. Off loopback, `reviewers` names who may review; each gets a token."""
    store = ReviewStore(store_path)
    need_token = not is_loopback(host)
    if need_token and not reviewers:
        raise ConfigError(f"--host {host} is not a loopback address: name the reviewers (--reviewers ann,bob); "
                          "each gets their own URL and token")
    tokens = store.reviewer_tokens(list(reviewers)) if need_token else {}
    csrf = secrets.token_urlsafe(24)
    app = FastAPI(title="rlaif review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.tokens = tokens
    templates = Jinja2Templates(directory=str(HERE / "templates"))  # autoescape on for .html
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def guard(request: Request, call_next):
        set_cookie = False
        request.state.reviewer = None
        if need_token:
            given = (request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE)
                     or request.headers.get("authorization", "").removeprefix("Bearer ").strip())
            owner = next((name for name, t in tokens.items() if hmac.compare_digest(given.encode(), t.encode())),
                         None)
            if owner is None:
                return _secure(PlainTextResponse("401: this review server needs your reviewer token: open the URL "
                                                 "printed for you when it started (…/?token=…)", status_code=401))
            request.state.reviewer = owner
            set_cookie = "token" in request.query_params
        elif (request.url.hostname or "") not in LOOPBACK_NAMES and not is_loopback(request.url.hostname or ""):
            return _secure(PlainTextResponse("400: unexpected Host header for a loopback server", status_code=400))
        if request.method == "POST":
            problem = _csrf_problem(request, csrf)
            if problem:
                return _secure(JSONResponse({"error": problem}, status_code=403))
        response = await call_next(request)
        if set_cookie:
            response.set_cookie(TOKEN_COOKIE, tokens[request.state.reviewer], httponly=True, samesite="strict")
        return _secure(response)

    def reviewer_of(request: Request) -> str | None:
        if need_token:  # the token's owner; a name in a cookie or a query counts for nothing
            return request.state.reviewer
        return request.cookies.get(REVIEWER_COOKIE) or default_reviewer

    def page(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"csrf": csrf, **context}, status_code=status)

    @app.get("/", response_class=HTMLResponse)
    def start(request: Request, reviewer: str | None = None):
        if reviewer is not None and not need_token:
            try:
                check_reviewer_name(reviewer)
            except InputError as e:
                return page(request, "start.html", status=400, error=str(e), total=store.num_items())
            response = RedirectResponse("/review", status_code=303)
            response.set_cookie(REVIEWER_COOKIE, reviewer, httponly=True, samesite="strict")
            return response
        if reviewer_of(request):
            return RedirectResponse("/review", status_code=303)
        return page(request, "start.html", total=store.num_items(), error=None)

    @app.get("/review", response_class=HTMLResponse)
    def review(request: Request, item: int | None = None, after: int | None = None):
        name = reviewer_of(request)
        if not name:
            return RedirectResponse("/", status_code=303)
        try:
            rid = store.register(name)
            item = item if item is not None else store.next_item(rid, after=after)
            done, total = store.progress(rid)
            view = store.item_view(rid, item) if item is not None else None
        except InputError as e:
            return page(request, "start.html", status=400, error=str(e), total=store.num_items())
        return page(request, "review.html", reviewer=name, view=view, done=done, total=total)

    @app.post("/api/verdict")
    def verdict(request: Request, body: VerdictIn):
        name = reviewer_of(request)
        if not name:
            return JSONResponse({"error": "no reviewer: open / and give your name"}, status_code=400)
        try:
            rid = store.register(name)
            out = store.record(rid, body.item_id, body.choice, body.note)
            out["done"], out["total"] = store.progress(rid)
        except InputError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        return out

    @app.post("/api/undo")
    def undo(request: Request):
        name = reviewer_of(request)
        if not name:
            return JSONResponse({"error": "no reviewer"}, status_code=400)
        return {"item_id": store.undo(store.register(name))}

    @app.get("/api/progress")
    def progress(request: Request):
        name = reviewer_of(request)
        if not name:
            return JSONResponse({"error": "no reviewer"}, status_code=400)
        done, total = store.progress(store.register(name))
        return {"reviewer": name, "done": done, "total": total}

    @app.get("/summary", response_class=HTMLResponse)
    def summary(request: Request):
        stats = review_statistics(store.current_verdicts(), store.meta().get("design", {}), store.reviewers())
        gate = _gate(stats, min_agreement, min_reviewed)
        return page(request, "summary.html", stats=stats, gate=gate, reviewer=reviewer_of(request))

    return app


def reviewer_urls(app: FastAPI, host: str, port: int) -> dict[str, str]:
    """The URL each reviewer opens: one per reviewer off loopback (a real address, never 0.0.0.0), else one."""
    shown = public_address() if host in ("0.0.0.0", "::", "") else host
    base = f"http://{f'[{shown}]' if ':' in shown else shown}:{port}/"
    if not app.state.tokens:
        return {"": base}
    return {name: f"{base}?token={token}" for name, token in app.state.tokens.items()}


def public_address() -> str:
    """This machine's address on its default route (no packet is sent), else its host name."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.254.254.254", 1))
            address = s.getsockname()[0]
        if not address.startswith("0."):
            return address
    except OSError:
        pass
    return socket.getfqdn() or socket.gethostname()


def _gate(stats: dict, min_agreement: float, min_reviewed: int) -> dict:
    p = stats["weighted_agreement"]
    passed = stats["items"] >= min_reviewed and (min_agreement <= 0 or (p is not None and p >= min_agreement))
    return {"passed": passed, "min_agreement": min_agreement, "min_reviewed": min_reviewed}


def _csrf_problem(request: Request, csrf: str) -> str | None:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return "verdicts are JSON posts from the review page"
    given = request.headers.get("x-csrf-token", "")
    if not hmac.compare_digest(given.encode(), csrf.encode()):
        return "missing or wrong CSRF token: reload the review page"
    origin = request.headers.get("origin")
    if origin and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
        return f"cross-site request from {json.dumps(origin)} refused"
    return None


def _secure(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response
