"""Links through real HTTP on loopback, on SQLite and PostgreSQL: anonymous downloads of files
(with Range) and folders (a streamed zip), passwords, expiry, revocation, deleted and renamed
targets, other users, and bad input."""

from __future__ import annotations

import base64
import hashlib
import io
import random
import time
import zipfile

import httpx
import pytest
from sqlalchemy import create_engine, select

from cubby.errors import BadRequest, InvalidPath, NotFound, Unauthorized
from cubby.metadata.schema import links as links_table
from tests.links.conftest import World

pytestmark = pytest.mark.xdist_group("links")

GONE_BODY = {"code": "not_found", "message": "this link does not exist, has expired or was revoked"}


def token_of(link: dict) -> str:
    return str(link["url"].rsplit("/l/", 1)[1])


def get(world: World, link: dict, sub: str = "", **kw: object) -> httpx.Response:
    with world.anon() as c:
        return c.get(f"/l/{token_of(link)}" + (f"/{sub}" if sub else ""), **kw)  # type: ignore[arg-type]


def test_file_link_gives_anyone_the_exact_bytes(world: World) -> None:
    data = random.Random(1).randbytes(3 * 1024 * 1024 + 17)
    world.put("/docs/report.pdf", data)
    link = world.alice.api.create_link("/docs/report.pdf")
    assert link["url"].startswith(world.server.url + "/l/") and len(token_of(link)) >= 43
    assert link["path"] == "/docs/report.pdf" and link["kind"] == "file" and link["state"] == "active"
    r = get(world, link)
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-length"] == str(len(data)) and r.headers["accept-ranges"] == "bytes"
    assert "report.pdf" in r.headers["content-disposition"]
    etag = r.headers["etag"]
    assert get(world, link, headers={"If-None-Match": etag}).status_code == 304
    # The same bytes as the authenticated route, and the same validator.
    assert b"".join(world.alice.api.download("/docs/report.pdf")) == data
    with world.anon() as c:
        api = c.get("/api/v1/content/docs/report.pdf", headers={"Authorization": f"Bearer {world.alice.token}"})
    assert api.headers["etag"] == etag


def test_range_requests_on_a_link(world: World) -> None:
    data = random.Random(2).randbytes(6 * 1024 * 1024)
    world.put("/big.bin", data)
    link = world.alice.api.create_link("/big.bin")
    cases = {
        "bytes=0-0": (0, 0),
        "bytes=1000000-3500000": (1_000_000, 3_500_000),  # crosses chunk boundaries
        f"bytes={len(data) - 10}-": (len(data) - 10, len(data) - 1),
        "bytes=-4096": (len(data) - 4096, len(data) - 1),
        f"bytes=5-{len(data) * 2}": (5, len(data) - 1),
    }
    for header, (first, last) in cases.items():
        r = get(world, link, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.content == data[first : last + 1], header
        assert r.headers["content-range"] == f"bytes {first}-{last}/{len(data)}"
    for header in (f"bytes={len(data)}-", f"bytes={len(data) + 5}-{len(data) + 9}", "bytes=-0"):
        r = get(world, link, headers={"Range": header})
        assert r.status_code == 416, header
        assert r.json()["code"] == "range_not_satisfiable"
    # If-Range with another version's validator: the whole (current) file.
    r = get(world, link, headers={"Range": "bytes=0-9", "If-Range": '"not-this-version"'})
    assert r.status_code == 200 and r.content == data


def _tree(world: World) -> dict[str, bytes]:
    rng = random.Random(3)
    files = {
        "a.txt": b"hello",
        "empty.bin": b"",
        "sub/b.bin": rng.randbytes(2 * 1024 * 1024 + 3),
        "sub/deeper/c.txt": "ünïcødé".encode(),
        "sub/Ärger.txt": rng.randbytes(1000),
    }
    for rel, data in files.items():
        world.put(f"/Photos/{rel}", data)
    world.alice.api.mkdir("/Photos/empty folder")
    world.alice.api.mkdir("/Photos/sub/also empty")
    world.put("/outside.txt", b"not in the folder")
    return files


def _zip_contents(body: bytes) -> tuple[dict[str, bytes], set[str]]:
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert zf.testzip() is None  # every CRC checks out
        files = {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}
        dirs = {i.filename for i in zf.infolist() if i.is_dir()}
    return files, dirs


def test_folder_link_streams_a_zip_of_everything_in_it(world: World) -> None:
    files = _tree(world)
    link = world.alice.api.create_link("/Photos")
    assert link["kind"] == "folder"
    with world.anon() as c, c.stream("GET", f"/l/{token_of(link)}") as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        # Streamed as it is built: no length is known up front, so it goes out chunked.
        assert "content-length" not in r.headers and r.headers.get("transfer-encoding") == "chunked"
        assert "Photos.zip" in r.headers["content-disposition"]
        body = r.read()
    got, dirs = _zip_contents(body)
    assert got == {f"Photos/{k}": v for k, v in files.items()}
    assert {"Photos/", "Photos/empty folder/", "Photos/sub/also empty/", "Photos/sub/", "Photos/sub/deeper/"} == dirs
    # A HEAD builds nothing and says what a GET would send.
    with world.anon() as c:
        head = c.head(f"/l/{token_of(link)}")
    assert head.status_code == 200 and head.content == b"" and head.headers["content-type"] == "application/zip"
    assert "content-length" not in head.headers
    # A link to the whole tree: the root has no name of its own, so the zip's top folder is "cubby".
    everything, _ = _zip_contents(get(world, world.alice.api.create_link("/")).content)
    assert everything == {**{f"cubby/Photos/{k}": v for k, v in files.items()}, "cubby/outside.txt": b"not in the folder"}


def test_paths_inside_a_folder_link_stay_inside_it(world: World) -> None:
    files = _tree(world)
    link = world.alice.api.create_link("/Photos")
    r = get(world, link, "sub/b.bin", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == files["sub/b.bin"][10:20]
    assert get(world, link, "SUB/deeper/C.TXT").content == files["sub/deeper/c.txt"]  # case-insensitive, like paths
    sub, _ = _zip_contents(get(world, link, "sub/deeper").content)
    assert sub == {"deeper/c.txt": files["sub/deeper/c.txt"]}
    for missing in ("nope.txt", "a.txt/x", "outside.txt"):
        r = get(world, link, missing)
        assert r.status_code == 404 and r.json() == GONE_BODY, missing
    with world.anon() as c:
        base = f"/l/{token_of(link)}"
        for escape in ("/..%2Foutside.txt", "/sub%2F..%2F..%2Foutside.txt", "//outside.txt", "/a%00b", "/sub//b.bin"):
            r = c.get(base + escape)
            assert r.status_code == 400 and r.json()["code"] == "invalid_path", escape
        # The same refusal whether or not the link exists: nothing is learnt about tokens.
        r = c.get("/l/" + "x" * 43 + "/..%2Foutside.txt")
        assert r.status_code == 400 and r.json()["code"] == "invalid_path"
    # A file link has no inside.
    file_link = world.alice.api.create_link("/outside.txt")
    assert get(world, file_link, "anything").status_code == 404


def test_password_protected_link(world: World) -> None:
    world.put("/secret.txt", b"the plans")
    link = world.alice.api.create_link("/secret.txt", password="correct horse")
    assert link["has_password"] is True
    r = get(world, link)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert b"the plans" not in r.content
    wrong = base64.b64encode(b"anyone:battery staple").decode()
    r = get(world, link, headers={"Authorization": f"Basic {wrong}"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert get(world, link, headers={"Authorization": "Basic !!!notbase64"}).status_code == 401
    right = base64.b64encode(b"whatever-user:correct horse").decode()
    r = get(world, link, headers={"Authorization": f"Basic {right}"})
    assert r.status_code == 200 and r.content == b"the plans"
    r = get(world, link, headers={"X-Cubby-Link-Password": "correct horse"})
    assert r.status_code == 200 and r.content == b"the plans"
    assert get(world, link, headers={"X-Cubby-Link-Password": "correct hors"}).status_code == 401
    with world.anon() as c:  # httpx's own Basic auth, as a browser would send it
        assert c.get(f"/l/{token_of(link)}", auth=("", "correct horse")).content == b"the plans"


def test_expired_link_answers_404_like_a_missing_one(world: World) -> None:
    world.put("/soon.txt", b"for a moment")
    link = world.alice.api.create_link("/soon.txt", expires=time.time() + 1.5)
    assert get(world, link).content == b"for a moment"
    time.sleep(max(0.0, link["expires_at"] - time.time()) + 0.2)
    r = get(world, link)
    assert r.status_code == 404 and r.json() == GONE_BODY
    (listed,) = world.alice.api.list_links()
    assert listed["state"] == "expired"


def test_revoked_link_answers_404_and_only_its_creator_can_revoke(world: World) -> None:
    world.put("/shared.txt", b"for now")
    link = world.alice.api.create_link("/shared.txt")
    with pytest.raises(NotFound):
        world.bob.api.revoke_link(link["id"])  # bob's token cannot touch alice's link
    assert get(world, link).content == b"for now"
    assert world.bob.api.list_links() == []
    world.alice.api.revoke_link(link["id"])
    r = get(world, link)
    assert r.status_code == 404 and r.json() == GONE_BODY
    with world.anon() as c:
        never = c.get("/l/" + "A" * 43)
        malformed = c.get("/l/not-a-token")
    assert never.status_code == malformed.status_code == 404
    assert never.json() == malformed.json() == r.json() == GONE_BODY
    with pytest.raises(NotFound):
        world.alice.api.revoke_link(link["id"])  # already revoked
    assert world.alice.api.list_links() == []


def test_link_follows_renames_and_dies_with_its_target(world: World) -> None:
    world.put("/Work/draft.txt", b"v1")
    file_link = world.alice.api.create_link("/Work/draft.txt")
    folder_link = world.alice.api.create_link("/Work")
    world.alice.api.move("/Work/draft.txt", "/Work/final.txt")
    world.alice.api.move("/Work", "/Archive/2026")
    assert get(world, file_link).content == b"v1"
    assert get(world, file_link).headers["content-disposition"].endswith("final.txt")
    got, _ = _zip_contents(get(world, folder_link).content)
    assert got == {"2026/final.txt": b"v1"}
    listed = {item["id"]: item for item in world.alice.api.list_links()}
    assert listed[file_link["id"]]["path"] == "/Archive/2026/final.txt"
    assert listed[folder_link["id"]]["path"] == "/Archive/2026"
    world.put("/Archive/2026/final.txt", b"v2, edited in place")  # a new revision of the same node
    assert get(world, file_link).content == b"v2, edited in place"
    world.alice.api.delete("/Archive")  # the folder above both targets
    for link in (file_link, folder_link):
        r = get(world, link)
        assert r.status_code == 404 and r.json() == GONE_BODY
    # A new file at the old path is another node: the dead link stays dead.
    world.put("/Archive/2026/final.txt", b"someone else's")
    assert get(world, file_link).status_code == 404
    assert {item["state"] for item in world.alice.api.list_links()} == {"target_deleted"}


def test_bad_input_is_refused_and_creates_nothing(world: World) -> None:
    world.put("/here.txt", b"x")
    api = world.alice.api
    with pytest.raises(NotFound):
        api.create_link("/not/here.txt")
    with pytest.raises(NotFound):
        world.bob.api.create_link("/here.txt")  # bob's tree has no /here.txt; alice's is not his
    with pytest.raises(InvalidPath):
        api.create_link("/a/../here.txt")
    with pytest.raises(InvalidPath):
        api.create_link("/a\x00b")
    for bad in ("tomorrow", "2030-13-45", "", True, [1]):
        with pytest.raises(BadRequest) as e:
            api.create_link("/here.txt", expires=bad)  # type: ignore[arg-type]
        assert e.value.code == "invalid_expires", bad
    for past in ("2001-01-01", "2001-01-01T00:00:00+00:00", time.time() - 5):
        with pytest.raises(BadRequest) as e:
            api.create_link("/here.txt", expires=past)
        assert e.value.code == "expires_in_past", past
    with pytest.raises(BadRequest) as e:
        api.create_link("/here.txt", expires=1e300)
    assert e.value.code == "invalid_expires"
    for pw in ("", "x" * 1025):
        with pytest.raises(BadRequest) as e:
            api.create_link("/here.txt", password=pw)
        assert e.value.code == "invalid_password"
    with world.anon() as c:
        r = c.post("/api/v1/links", json={"path": "/here.txt"})
        assert r.status_code == 401  # no token
        auth = {"Authorization": f"Bearer {world.alice.token}"}
        assert c.post("/api/v1/links", json={"path": 7}, headers=auth).json()["code"] == "bad_request"
        assert c.post("/api/v1/links", content=b"{", headers={**auth, "Content-Type": "application/json"}).status_code == 400
        r = c.delete("/api/v1/links/../../tokens", headers=auth)
        assert r.status_code in (400, 404)
        r = c.delete("/api/v1/links/NOT-AN-ID", headers=auth)
        assert r.status_code == 400 and r.json()["code"] == "invalid_link_id"
    with pytest.raises(Unauthorized):
        type(api)(world.server.url, "bogus-token").list_links()
    assert api.list_links() == []


def test_tokens_and_passwords_are_stored_hashed_and_kept_out_of_logs(world: World) -> None:
    world.put("/h.txt", b"h")
    link = world.alice.api.create_link("/h.txt", password="hunter22")
    token = token_of(link)
    assert get(world, link, headers={"X-Cubby-Link-Password": "hunter22"}).status_code == 200
    engine = create_engine(world.server.metadata_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(select(links_table).where(links_table.c.link_id == link["id"])).one()
    finally:
        engine.dispose()
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    stored = " ".join(str(v) for v in row)
    assert token not in stored and "hunter22" not in stored
    assert row.password_hash.startswith("scrypt$")
    salt = row.password_hash.split("$")[4]
    other = world.alice.api.create_link("/h.txt", password="hunter22")
    assert other["id"] != link["id"] and token_of(other) != token
    with create_engine(world.server.metadata_url).connect() as conn:
        other_hash = conn.execute(select(links_table.c.password_hash).where(links_table.c.link_id == other["id"])).scalar()
    assert other_hash.split("$")[4] != salt  # a salt per link
    with world.anon() as c:  # a method a link does not take is refused without logging the token either
        r = c.post(f"/l/{token}/sub", content=b"x")
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    assert token not in world.server.logs() and "hunter22" not in world.server.logs()
    assert f"<link {link['id']}>" in world.server.logs()
