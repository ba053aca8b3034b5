"""The review page in a real headless Chromium against a real `rlaif review` server (uvicorn subprocess)."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import REPO, RLAIF
from review_support import pair_row, toy_pairs, write_pairs

import playwright.sync_api as playwright_api  # installed by scripts/install.sh --dev; a missing browser stack must fail, not skip

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "tests" / "artifacts"
XSS = ["<script>window.pwned=1</script>", "<img src=x onerror=window.pwned=1>",
       "</textarea><script>window.pwned=1</script><textarea>", "</pre><img src=x onerror=\"window.pwned=1\">"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`rlaif review RUN ...` in a subprocess; reads the token it prints."""

    def __init__(self, run: Path, *args: str, host: str = "127.0.0.1"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([*RLAIF, "review", str(run), "--host", host, "--port", str(self.port), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.urls: dict[str, str] = {}  # reviewer -> the URL printed for them (off loopback)
        for line in self.proc.stdout:
            if line.startswith("reviewer "):
                name, url = line.removeprefix("reviewer ").split(": open ")
                self.urls[name] = url.strip()
            if line.startswith("serving on "):
                break
        self.tokens = {name: url.split("?token=")[1] for name, url in self.urls.items()}
        self.token = next(iter(self.tokens.values()), None)
        deadline = time.time() + 60
        while True:
            try:
                httpx.get(self.url + "/static/review.css", timeout=2)
                break
            except httpx.TransportError:
                assert self.proc.poll() is None and time.time() < deadline, "review server did not start"
                time.sleep(0.2)

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install -y chromium (see scripts/install.sh)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def toy_server(tmp_path_factory):
    run = tmp_path_factory.mktemp("review") / "run"
    write_pairs(run, toy_pairs(40, seed=2))
    (run / "pipeline.yaml").write_text("review:\n  sample_size: 12\n  min_reviewed: 3\n  min_agreement: 0.5\n")
    server = Server(run)
    yield server, run
    server.close()


def store_rows(run: Path, sql: str):
    with sqlite3.connect(run / "iter-000" / "review" / "review.sqlite") as con:
        return con.execute(sql).fetchall()


def test_keyboard_review_reload_continue_and_summary(browser, toy_server):
    server, run = toy_server
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server.url + "/?reviewer=alice")
    assert page.locator("#progress").inner_text() == "0 / 12 done"
    assert page.locator("#reveal").count() == 0  # the judge stays hidden until the reviewer answers
    for key in ["1", "2", "t"]:
        item = page.locator("#controls").get_attribute("data-item")
        with page.expect_navigation():  # the answer reloads the item, judge revealed
            page.keyboard.press(key)
        assert page.locator("#reveal").count() == 1
        assert page.locator("#controls").get_attribute("data-item") == item
        with page.expect_navigation():
            page.keyboard.press("n")
        assert page.locator("#controls").get_attribute("data-item") != item
    page.reload()
    assert page.locator("#progress").inner_text() == "3 / 12 done"
    fourth = page.locator("#controls").get_attribute("data-item")
    with page.expect_navigation():  # the answer reloads the item, judge revealed
        page.keyboard.press("b")
    assert page.locator("#reveal").count() == 1
    page.keyboard.press("?")
    assert page.locator("#help").is_visible()
    page.keyboard.press("?")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "review-page.png"), full_page=True)
    rows = store_rows(run, "SELECT c.item_id, c.choice FROM current_verdicts c JOIN reviewers r USING (reviewer_id) "
                           "WHERE r.name = 'alice' ORDER BY c.verdict_id")
    assert [c for _, c in rows] == ["A", "B", "tie", "both-bad"] and rows[-1][0] == int(fourth)
    with page.expect_navigation():
        page.keyboard.press("u")  # undo the last verdict: back on that item, unanswered
    assert page.locator("#reveal").count() == 0 and page.locator("#controls").get_attribute("data-item") == fourth
    assert page.locator("#progress").inner_text() == "3 / 12 done"
    assert store_rows(run, "SELECT COUNT(*) FROM verdicts")[0][0] == 5  # the undo is a row of the history
    with page.expect_navigation():  # the answer reloads the item, judge revealed
        page.keyboard.press("1")
    assert page.locator("#reveal").count() == 1
    page.goto(server.url + "/summary")
    assert "4 of 12 sampled pairs reviewed" in page.locator("#gate").inner_text()
    page.screenshot(path=str(ARTIFACTS / "review-summary.png"), full_page=True)
    docs = REPO / "docs"
    docs.mkdir(exist_ok=True)
    shutil.copy(ARTIFACTS / "review-page.png", docs / "review-page.png")
    shutil.copy(ARTIFACTS / "review-summary.png", docs / "review-summary.png")
    page.close()


def _reviewer_posts(url: str, name: str, n: int) -> int:
    with httpx.Client(base_url=url, timeout=30) as client:
        client.get("/", params={"reviewer": name})
        page = client.get("/review").text
        csrf = page.split('name="csrf-token" content="')[1].split('"')[0]
        ok = 0
        for item in range(n):
            r = client.post("/api/verdict", json={"item_id": item, "choice": "A"}, headers={"X-CSRF-Token": csrf})
            ok += r.status_code == 200
        return ok


def test_concurrent_reviewers_over_http_lose_nothing_and_csrf_is_enforced(toy_server):
    server, run = toy_server
    with ProcessPoolExecutor(4) as pool:
        oks = list(pool.map(_reviewer_posts, [server.url] * 4, [f"load{k}" for k in range(4)], [12] * 4))
    assert oks == [12] * 4
    assert store_rows(run, "SELECT COUNT(*) FROM verdicts v JOIN reviewers r USING (reviewer_id) "
                           "WHERE r.name LIKE 'load%'")[0][0] == 48
    with httpx.Client(base_url=server.url) as client:
        client.get("/", params={"reviewer": "mallory"})
        csrf = client.get("/review").text.split('name="csrf-token" content="')[1].split('"')[0]
        assert client.post("/api/verdict", json={"item_id": 0, "choice": "A"}).status_code == 403  # no token
        assert client.post("/api/verdict", data={"item_id": 0, "choice": "A"},  # a cross-site form's shape
                           headers={"X-CSRF-Token": csrf}).status_code == 403
        assert client.post("/api/verdict", json={"item_id": 0, "choice": "A"},
                           headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"}).status_code == 403
        r = client.post("/api/verdict", json={"item_id": 0, "choice": "A"}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200
        assert client.get("/review", headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding


@pytest.fixture(scope="module")
def xss_server(tmp_path_factory):
    run = tmp_path_factory.mktemp("xss") / "run"
    rows = [pair_row(i, f"What is 1+{i}? {p}", p + "\n  keep   spaces", "2", 0.5, True, "no-carry", "2")
            for i, p in enumerate(XSS)]
    write_pairs(run, rows, shards=1)
    server = Server(run, "--reviewer", "eve", host="0.0.0.0")
    yield server, run
    server.close()


def test_each_reviewer_has_a_token_that_decides_who_answers(tmp_path):
    run = tmp_path / "run"
    write_pairs(run, toy_pairs(20, seed=3), shards=1)
    (run / "pipeline.yaml").write_text("review:\n  sample_size: 6\n  min_reviewed: 1\n")
    server = Server(run, "--reviewers", "ann,bob", host="0.0.0.0")
    try:
        assert set(server.tokens) == {"ann", "bob"} and server.tokens["ann"] != server.tokens["bob"]
        assert all("0.0.0.0" not in url for url in server.urls.values())  # a host colleagues can open
        with httpx.Client(base_url=server.url) as ann:
            page = ann.get("/review", params={"token": server.tokens["ann"], "reviewer": "bob"}).text
            csrf = page.split('name="csrf-token" content="')[1].split('"')[0]
            ann.cookies.set("rlaif_reviewer", "mallory")  # a claimed name counts for nothing
            r = ann.post("/api/verdict", json={"item_id": 0, "choice": "A"},
                         headers={"x-csrf-token": csrf, "content-type": "application/json"})
            assert r.status_code == 200, r.text
            assert ann.get("/api/progress").json()["reviewer"] == "ann"
        assert httpx.get(server.url + "/review", params={"token": "invented"}).status_code == 401
    finally:
        server.close()
    con = sqlite3.connect(run / "iter-000" / "review" / "review.sqlite")
    who = con.execute("SELECT r.name FROM verdicts v JOIN reviewers r USING (reviewer_id)").fetchall()
    assert who == [("ann",)] and {n for (n,) in con.execute("SELECT name FROM reviewers")} == {"ann"}
    again = Server(run, "--reviewers", "ann,bob", host="0.0.0.0")  # tokens survive a restart
    try:
        assert again.tokens == server.tokens
    finally:
        again.close()


def test_off_loopback_without_reviewers_is_refused(tmp_path):
    run = tmp_path / "run"
    write_pairs(run, toy_pairs(10, seed=4), shards=1)
    result = subprocess.run([*RLAIF, "review", str(run), "--host", "0.0.0.0"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "name the reviewers (--reviewers ann,bob)" in result.stderr, result.stderr


def test_token_is_required_off_loopback(xss_server):
    server, _ = xss_server
    assert server.token and len(server.token) >= 24
    for path in ["/", "/review", "/summary", "/static/review.js", "/api/progress"]:
        assert httpx.get(server.url + path).status_code == 401
        assert httpx.get(server.url + path, params={"token": "wrong"}).status_code == 401
    assert httpx.post(server.url + "/api/verdict", json={"item_id": 0, "choice": "A"}).status_code == 401
    with httpx.Client(base_url=server.url) as client:
        r = client.get("/review", params={"token": server.token})
        assert r.status_code == 200 and "rlaif_token" in client.cookies
        assert client.get("/api/progress").json()["total"] == len(XSS)  # the cookie carries the token
    assert httpx.get(server.url + "/api/progress", headers={"Authorization": f"Bearer {server.token}"}).status_code == 200


def test_xss_payloads_render_as_text_and_run_nothing(browser, xss_server):
    server, _ = xss_server
    # control: the detector fires on an unescaped payload
    control = browser.new_page()
    control.set_content(f"<div>{XSS[1]}</div>")
    control.wait_for_function("window.pwned === 1")
    control.close()
    page = browser.new_page()
    page.goto(f"{server.url}/?token={server.token}")
    csp = page.request.get(server.url + "/review").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    for _ in XSS:
        page.wait_for_load_state("networkidle")
        texts = page.locator("pre.text").all_inner_texts()
        payload = max((p for p in XSS if any(p in t for t in texts)), key=len)
        assert any(t == payload + "\n  keep   spaces" for t in texts), texts  # literal, whitespace kept
        assert page.evaluate("window.pwned") is None
        assert page.locator("main script, main img, main textarea").count() == 0
        with page.expect_navigation():  # the answer reloads the item, judge revealed
            page.keyboard.press("1")
        assert page.locator("#reveal").count() == 1
        with page.expect_navigation():
            page.keyboard.press("n")
    assert page.locator("#all-done").count() == 1
    assert page.evaluate("window.pwned") is None
    page.close()
