"""The web app end to end, in a real headless Chromium (Debian's ``chromium``, driven by the
``playwright`` package; no browser download) over real HTTP on loopback.

With ``CUBBY_SCREENSHOTS=1`` the tests also save screenshots of the main pages, at desktop and
phone widths, to ``docs/screenshots/`` (what the README shows).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.thread_server import ThreadServer

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "a long enough password"
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "screenshots"
HOSTILE = "<img src=x onerror=alert(1)>"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}

pytestmark = pytest.mark.xdist_group("browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: 'python3 scripts/dev.py test' installs it (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def tokens(server: ThreadServer) -> dict[str, str]:
    return {name: server.add_user(name, PASSWORD) for name in ("alice", "bob", "carol", "dave")}


class Watch:
    """Collects what must never happen on a page: script dialogs (alert), page errors."""

    def __init__(self) -> None:
        self.dialogs: list[str] = []
        self.errors: list[str] = []

    def attach(self, page: Any) -> None:
        def dialog(d: Any) -> None:
            self.dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", dialog)
        page.on("pageerror", lambda e: self.errors.append(str(e)))


def log_in(page: Any, server: ThreadServer, name: str, password: str = PASSWORD) -> None:
    page.goto(server.url + "/")
    page.fill("#login-name", name)
    page.fill("#login-password", password)
    page.click("#login-submit")


@pytest.fixture(scope="module")
def alice(browser: Any, server: ThreadServer, tokens: dict[str, str]) -> Iterator[tuple[Any, Watch]]:
    ctx = browser.new_context(viewport=DESKTOP, accept_downloads=True)
    page = ctx.new_page()
    watch = Watch()
    watch.attach(page)
    log_in(page, server, "alice")
    expect(page.locator("#view-title")).to_have_text("All files")
    expect(page.locator("body")).to_have_attribute("data-live", "yes", timeout=15_000)
    yield page, watch
    assert watch.dialogs == [] and watch.errors == []
    ctx.close()


def shot(page: Any, name: str) -> None:
    if os.environ.get("CUBBY_SCREENSHOTS") != "1":
        return
    SHOTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    page.screenshot(path=str(SHOTS / f"{name}-desktop.png"))
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(SHOTS / f"{name}-phone.png"))
    page.set_viewport_size(size)


def row(page: Any, path: str) -> Any:
    return page.locator(f'#rows tr[data-path="{path}"]')


def go(page: Any, server: ThreadServer, hash_: str) -> None:
    page.evaluate("h => { location.hash = h; }", hash_)


def act(page: Any, path: str, action: str) -> None:
    """Open a row's actions dialog and pick one.

    The listing is drawn again whenever the server says the folder changed (an upload's commit
    arrives over the notify socket, and each finished upload asks for a refresh as well), and
    a click that lands while the rows are replaced can open nothing: on CI, once in four runs
    of the suite, the dialog never came (the Rename button waited out 30 s) although a person
    would simply click again. So the row's button is clicked again, up to three times, when
    no dialog shows the action within 5 s; the action must still be there."""
    choice = page.locator("#dialog .choices").get_by_role("button", name=action, exact=True)
    for _ in range(3):
        row(page, path).locator("button.more").click()
        try:
            choice.wait_for(state="visible", timeout=5_000)
            break
        except playwright_api.TimeoutError:
            page.keyboard.press("Escape")  # whatever dialog did open, closed
    choice.click()


def new_folder(page: Any, name: str) -> None:
    """Make a folder in the folder on screen, through the New folder dialog."""
    page.get_by_role("button", name="New folder").click()
    page.get_by_label("Folder name").fill(name)
    page.locator("#dialog button.primary").click()
    expect(row(page, "/" + name)).to_be_visible()


def fetch(server: ThreadServer, token: str, path: str) -> bytes:
    r = httpx.get(f"{server.url}/api/v1/content{path}", headers={"Authorization": f"Bearer {token}"}, timeout=60)
    r.raise_for_status()
    return r.content


# ------------------------------------------------------------------------------------------
def test_login_wrong_password_throttle_and_logout(browser: Any, server: ThreadServer, tokens: dict[str, str]) -> None:
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    log_in(page, server, "dave", "not the password")
    expect(page.locator("#login-error")).to_contain_text("Wrong user name or password")
    shot(page, "login")
    for _ in range(4):
        page.click("#login-submit")
        page.wait_for_timeout(50)
    expect(page.locator("#login-error")).to_contain_text("Too many failed attempts")
    page.fill("#login-password", PASSWORD)  # the right one waits too
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_contain_text("Too many failed attempts")

    log_in(page, server, "carol")
    expect(page.locator("#view-title")).to_have_text("All files")
    expect(page.locator("#who")).to_have_text("carol")
    go(page, server, "#/sessions")
    expect(page.locator("tr[data-session]")).to_have_count(1)
    expect(page.locator("tr[data-session]")).to_contain_text("(this browser)")
    page.click("#logout")
    expect(page.locator("#login-form")).to_be_visible()
    page.goto(server.url + "/")
    expect(page.locator("#login-form")).to_be_visible()
    ctx.close()


def test_upload_by_picker_and_drop_with_a_hostile_name(alice: tuple[Any, Watch], server: ThreadServer, tokens: dict[str, str]) -> None:
    page, watch = alice
    go(page, server, "#/files/")
    page.set_input_files("#pick-files", [
        {"name": "hello.txt", "mimeType": "text/plain", "buffer": b"hello from the picker\n"},
        {"name": HOSTILE, "mimeType": "text/plain", "buffer": b"not html"},
        {"name": "notes (conflicted copy from laptop 2026-01-02).txt", "mimeType": "text/plain", "buffer": b"c"},
    ])
    expect(row(page, "/hello.txt")).to_be_visible(timeout=15_000)
    hostile = row(page, "/" + HOSTILE)
    expect(hostile).to_be_visible()
    expect(hostile.locator("td.name [data-name]")).to_have_text(HOSTILE)
    assert page.locator("#main img").count() == 0
    expect(row(page, "/notes (conflicted copy from laptop 2026-01-02).txt").locator(".badge.conflict")).to_be_visible()
    # Drag and drop: a drop event carrying a file, as the browser delivers it.
    page.evaluate("""() => {
        const dt = new DataTransfer();
        dt.items.add(new File(["dropped bytes"], "dropped.txt", {type: "text/plain"}));
        for (const type of ["dragenter", "dragover", "drop"]) {
            document.getElementById("main").dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
        }
    }""")
    expect(row(page, "/dropped.txt")).to_be_visible(timeout=15_000)
    assert fetch(server, tokens["alice"], "/dropped.txt") == b"dropped bytes"
    assert fetch(server, tokens["alice"], "/hello.txt") == b"hello from the picker\n"
    # The preview of the hostile file shows its name and bytes as text.
    hostile.locator("button.link").click()
    expect(page.locator("#dialog-title")).to_have_text(HOSTILE)
    expect(page.locator("#dialog .preview-text")).to_have_text("not html")
    page.keyboard.press("Escape")
    assert page.evaluate("document.querySelectorAll('img[src=x]').length") == 0
    assert watch.dialogs == []
    shot(page, "files")


def test_large_upload_interrupted_and_resumed(alice: tuple[Any, Watch], server: ThreadServer, tokens: dict[str, str], tmp_path: Path) -> None:
    """A 32 MiB upload loses its connection after half its chunks; the page is closed and the
    file picked again: only the missing half is sent."""
    page, _ = alice
    big = tmp_path / "big.bin"
    data = os.urandom(32 * 1024 * 1024)
    big.write_bytes(data)
    sent: list[int] = []
    phase = {"n": 1, "allowed": 1}

    def handler(route: Any) -> None:
        if phase["n"] == 1 and len(sent) >= phase["allowed"]:
            route.abort("connectionreset")  # the network is gone
            return
        sent.append(phase["n"])
        route.continue_()

    page.route("**/api/v1/blocks/upload*", handler)
    try:
        go(page, server, "#/files/")
        page.set_input_files("#pick-files", str(big))
        item = page.locator('#upload-list li[data-upload="/big.bin"]')
        expect(item).to_have_attribute("data-interrupted", "yes", timeout=60_000)
        expect(item.locator(".upload-status")).to_contain_text("Connection lost")
        shot(page, "upload-interrupted")
        page.reload()  # the person gives up on this tab, and later picks the file again
        phase["n"] = 2
        expect(page.locator("#view-title")).to_have_text("All files")
        page.set_input_files("#pick-files", str(big))
        item = page.locator('#upload-list li[data-upload="/big.bin"]')
        expect(item).to_have_attribute("data-done", "yes", timeout=90_000)
    finally:
        page.unroute("**/api/v1/blocks/upload*")
    # 8 chunks of 4 MiB in batches of 4 (16 MiB): one batch arrived before the drop, one after.
    assert sent.count(1) == 1 and sent.count(2) == 1, sent
    assert hashlib.sha256(fetch(server, tokens["alice"], "/big.bin")).digest() == hashlib.sha256(data).digest()
    expect(row(page, "/big.bin")).to_contain_text("32 MB")


def test_rename_move_delete_undelete_restore(alice: tuple[Any, Watch], server: ThreadServer, tokens: dict[str, str]) -> None:
    page, _ = alice
    go(page, server, "#/files/")
    new_folder(page, "Docs")
    for n, content in enumerate((b"version one", b"version two"), 1):
        page.set_input_files("#pick-files", [{"name": "notes.txt", "mimeType": "text/plain", "buffer": content}])
        done = page.locator('#upload-list li[data-upload="/notes.txt"][data-done="yes"]')
        expect(done, page.locator("#upload-list").inner_text()).to_have_count(n, timeout=15_000)
    assert fetch(server, tokens["alice"], "/notes.txt") == b"version two"

    act(page, "/notes.txt", "Rename")
    page.get_by_label("New name").fill("plan.txt")
    page.locator("#dialog button.primary").click()
    expect(row(page, "/plan.txt")).to_be_visible()
    expect(row(page, "/notes.txt")).to_have_count(0)

    act(page, "/plan.txt", "Move")
    page.get_by_label("Move into folder").fill("/Docs")
    page.locator("#dialog button.primary").click()
    expect(row(page, "/plan.txt")).to_have_count(0)
    row(page, "/Docs").locator("a").click()
    expect(page.locator("#view-title")).to_have_text("Docs")
    expect(row(page, "/Docs/plan.txt")).to_be_visible()

    act(page, "/Docs/plan.txt", "Versions")
    expect(page.locator("tr[data-rev]")).to_have_count(2)
    shot(page, "versions")
    page.locator("tr[data-rev]").nth(1).get_by_role("button", name="Restore").click()
    expect(page.locator("tr[data-rev]")).to_have_count(3)
    assert fetch(server, tokens["alice"], "/Docs/plan.txt") == b"version one"

    go(page, server, "#/files/Docs")
    act(page, "/Docs/plan.txt", "Delete")
    page.locator("#dialog button.primary").click()
    expect(row(page, "/Docs/plan.txt")).to_have_count(0)
    page.get_by_role("link", name="Deleted files").click()
    undelete = page.get_by_role("button", name="Undelete plan.txt")
    expect(undelete).to_be_visible()
    undelete.click()
    expect(page.locator("#deleted-status")).to_have_text("Nothing was deleted in this folder.")
    assert fetch(server, tokens["alice"], "/Docs/plan.txt") == b"version one"


def test_share_with_another_user(browser: Any, alice: tuple[Any, Watch], server: ThreadServer, tokens: dict[str, str]) -> None:
    page, _ = alice
    go(page, server, "#/files/")
    new_folder(page, "Team")
    httpx.post(f"{server.url}/api/v1/files/commit", headers={"Authorization": f"Bearer {tokens['alice']}"},
               json={"path": "/Team/agenda.txt", "size": 0, "chunks": []}).raise_for_status()
    act(page, "/Team", "Share")
    page.get_by_label("User name").fill("bob")
    page.get_by_label("Access").select_option("editor")
    page.locator("#dialog button.primary").click()
    expect(row(page, "/Team").locator(".badge.shared")).to_be_visible(timeout=10_000)

    ctx = browser.new_context(viewport=DESKTOP)
    bob = ctx.new_page()
    log_in(bob, server, "bob")
    expect(bob.locator("#view-title")).to_have_text("All files")
    bob.get_by_role("link", name="Sharing").click()
    accept = bob.get_by_role("button", name="Accept the invitation to Team")
    expect(accept).to_be_visible()
    shot(bob, "sharing")
    accept.click()
    open_ = bob.locator("section.share").get_by_role("link", name="Open")
    expect(open_).to_be_visible()
    open_.click()
    expect(bob.locator("#view-title")).to_have_text("Team")
    expect(row(bob, "/Team/agenda.txt")).to_be_visible()
    ctx.close()


def test_link_opens_in_a_fresh_context(browser: Any, alice: tuple[Any, Watch], server: ThreadServer) -> None:
    page, _ = alice
    go(page, server, "#/files/")
    expect(row(page, "/hello.txt")).to_be_visible()
    act(page, "/hello.txt", "Create link")
    page.locator("#dialog button.primary").click()
    url_box = page.locator("#dialog input.link-url")
    expect(url_box).to_be_visible()
    url = url_box.input_value()
    assert url.startswith(server.url + "/l/")
    page.keyboard.press("Escape")
    go(page, server, "#/links")
    expect(page.get_by_role("button", name="Revoke the link to /hello.txt")).to_be_visible()
    shot(page, "links")

    fresh = browser.new_context(accept_downloads=True)
    stranger = fresh.new_page()
    with stranger.expect_download() as info:
        stranger.evaluate("u => { location.href = u; }", url)
    download = info.value
    assert download.suggested_filename == "hello.txt"
    assert Path(download.path()).read_bytes() == b"hello from the picker\n"
    fresh.close()


def test_cli_put_appears_without_reload(alice: tuple[Any, Watch], server: ThreadServer, tokens: dict[str, str], tmp_path: Path) -> None:
    page, _ = alice
    go(page, server, "#/files/")
    expect(page.locator("body")).to_have_attribute("data-live", "yes", timeout=15_000)
    marker = page.evaluate("() => (window.__sameDocument = Math.random())")
    local = tmp_path / "from-cli.txt"
    local.write_text("put by the command line")
    env = {**os.environ, "CUBBY_URL": server.url, "CUBBY_TOKEN": tokens["alice"]}
    subprocess.run([sys.executable, "-m", "cubby", "put", str(local), "/from-cli.txt"], env=env, check=True,
                   capture_output=True, timeout=60)
    expect(row(page, "/from-cli.txt")).to_be_visible(timeout=15_000)
    assert page.evaluate("() => window.__sameDocument") == marker  # no reload happened


def test_csrf_refused_in_the_browser(alice: tuple[Any, Watch], server: ThreadServer) -> None:
    page, _ = alice
    status = page.evaluate("""async () => {
        const r = await fetch("/api/v1/files/mkdir", {method: "POST", credentials: "same-origin",
            headers: {"Content-Type": "application/json"}, body: JSON.stringify({path: "/forged"})});
        return [r.status, (await r.json()).code];
    }""")
    assert status == [403, "csrf"]
    listing = page.evaluate("async () => (await (await fetch('/api/v1/files/list?path=/')).json()).entries.map(e => e.name)")
    assert "forged" not in listing


def test_ten_thousand_entries_are_paged(browser: Any, server: ThreadServer, tokens: dict[str, str]) -> None:
    token = tokens["carol"]
    commits = [{"path": f"/big/f{i:05d}.txt", "size": 0, "chunks": []} for i in range(10_000)]
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
        for i in range(0, len(commits), 1000):
            c.post("/api/v1/files/commit_batch", json={"commits": commits[i : i + 1000]}).raise_for_status()
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    log_in(page, server, "carol")
    expect(page.locator("#view-title")).to_have_text("All files")
    go(page, server, "#/files/big")
    expect(page.locator("#count")).to_have_text("10,000 items", timeout=30_000)
    expect(page.locator("#rows tr")).to_have_count(200)
    expect(page.locator("#pager")).to_contain_text("Page 1 of 50")
    page.get_by_role("button", name="Name ▲").click()  # sort descending
    expect(page.locator("#rows tr").first).to_have_attribute("data-path", "/big/f09999.txt")
    page.get_by_role("button", name="Next page").click()
    expect(page.locator("#pager")).to_contain_text("Page 2 of 50")
    ctx.close()


def tiny_png() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * 4 for _ in range(4))  # 4x4 red pixels
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_keyboard_actions_and_image_preview(alice: tuple[Any, Watch], server: ThreadServer) -> None:
    page, _ = alice
    go(page, server, "#/files/")
    page.set_input_files("#pick-files", [{"name": "red.png", "mimeType": "image/png", "buffer": tiny_png()}])
    expect(row(page, "/red.png")).to_be_visible(timeout=15_000)
    # Keyboard only: the row's actions button opens a modal dialog, focus moves into it,
    # Escape closes it and gives focus back.
    more = page.get_by_role("button", name="Actions for red.png")
    more.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#dialog")).to_have_attribute("open", "")
    assert page.evaluate("document.activeElement.closest('dialog') !== null")
    page.keyboard.press("Escape")
    expect(page.locator("#dialog")).not_to_have_attribute("open", "")
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Actions for red.png"
    # The image preview is the file's bytes from a blob: URL, drawn.
    more.click()
    page.locator("#dialog .choices").get_by_role("button", name="Preview", exact=True).click()
    img = page.get_by_role("img", name="Preview of red.png")
    expect(img).to_be_visible()
    assert img.get_attribute("src").startswith("blob:")
    page.wait_for_function("() => document.querySelector('#dialog img').naturalWidth === 4")
    page.keyboard.press("Escape")


def test_folder_upload_by_picker(alice: tuple[Any, Watch], server: ThreadServer, tokens: dict[str, str], tmp_path: Path) -> None:
    page, _ = alice
    top = tmp_path / "Album"
    (top / "2026").mkdir(parents=True)
    (top / "cover.txt").write_bytes(b"cover")
    (top / "2026" / "day1.txt").write_bytes(b"day one")
    go(page, server, "#/files/")
    page.set_input_files("#pick-folder", str(top))
    expect(row(page, "/Album")).to_be_visible(timeout=15_000)
    expect(page.locator('#upload-list li[data-upload="/Album/2026/day1.txt"][data-done="yes"]')).to_have_count(1, timeout=15_000)
    assert fetch(server, tokens["alice"], "/Album/2026/day1.txt") == b"day one"
    assert fetch(server, tokens["alice"], "/Album/cover.txt") == b"cover"
