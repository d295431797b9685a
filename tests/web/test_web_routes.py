"""The web app's own routes (folder zip, deleted files, static assets) over real HTTP."""

from __future__ import annotations

import io
import zipfile

import httpx

from tests.helpers.thread_server import ThreadServer

PASSWORD = "a long enough password"


def session(server: ThreadServer, name: str) -> tuple[httpx.Client, httpx.Client]:
    token = server.add_user(name, PASSWORD)
    web = httpx.Client(base_url=server.url, timeout=30)
    r = web.post("/api/v1/session", json={"name": name, "password": PASSWORD})
    web.headers["X-CSRF-Token"] = r.json()["csrf"]
    return web, httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def put(api: httpx.Client, path: str, data: bytes) -> None:
    import hashlib

    h = hashlib.sha256(data).hexdigest()
    frames = bytes.fromhex(h) + len(data).to_bytes(4, "big") + data
    stat = api.get("/api/v1/files/stat", params={"path": path})
    rev = stat.json()["entry"]["rev"] if stat.status_code == 200 else None
    body = {"path": path, "size": len(data), "chunks": [{"hash": h, "size": len(data)}], "expected_rev": rev}
    r = api.post("/api/v1/files/commit", json=body).json()
    if r["status"] == "need_chunks":
        api.post(f"/api/v1/blocks/upload?ns_id={r['ns_id']}", content=frames,
                 headers={"Content-Type": "application/x-cubby-chunks"}).raise_for_status()
        r = api.post("/api/v1/files/commit", json=body).json()
    assert r["status"] == "committed", r


def test_folder_zip_with_the_cookie(server: ThreadServer) -> None:
    web, api = session(server, "zipper")
    put(api, "/Photos/a.txt", b"alpha")
    put(api, "/Photos/sub/b.txt", b"beta")
    r = web.get("/web/zip", params={"path": "/Photos"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    z = zipfile.ZipFile(io.BytesIO(r.content))
    assert z.read("Photos/a.txt") == b"alpha" and z.read("Photos/sub/b.txt") == b"beta"
    assert web.get("/web/zip", params={"path": "/Photos/a.txt"}).status_code == 404
    assert httpx.get(server.url + "/web/zip", params={"path": "/Photos"}).status_code == 401


def test_deleted_files_of_a_folder(server: ThreadServer) -> None:
    web, api = session(server, "trasher")
    put(api, "/Docs/gone.txt", b"1")
    put(api, "/Docs/back.txt", b"2")
    put(api, "/Docs/kept.txt", b"3")
    for p in ("/Docs/gone.txt", "/Docs/back.txt"):
        api.post("/api/v1/files/delete", json={"path": p}).raise_for_status()
    put(api, "/Docs/back.txt", b"again")  # exists again: no longer offered for undelete
    rows = web.get("/api/v1/web/deleted", params={"path": "/Docs"}).json()["deleted"]
    assert [r["path"] for r in rows] == ["/Docs/gone.txt"]
    rev = api.get("/api/v1/files/history", params={"path": "/Docs/gone.txt", "limit": 1}).json()["revisions"][0]["rev"]
    assert web.post("/api/v1/files/restore", json={"path": "/Docs/gone.txt", "rev": rev}).status_code == 200
    assert web.get("/api/v1/web/deleted", params={"path": "/Docs"}).json()["deleted"] == []
    assert web.get("/api/v1/web/deleted", params={"path": "/Nope"}).status_code == 404


def test_static_assets(server: ThreadServer) -> None:
    r = httpx.get(server.url + "/static/app.css")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
    again = httpx.get(server.url + "/static/app.css", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304
    assert httpx.get(server.url + "/static/../../pyproject.toml").status_code == 404
    assert httpx.get(server.url + "/static/nothing.js").status_code == 404
