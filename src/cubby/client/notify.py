"""`PushWaiter`: the sync client's `ChangeWaiter` over the notification role's long-poll.

One long-poll at a time holds an HTTP connection open until a namespace of the cursor moves,
the account's namespaces change, or the timeout passes. While no notification server answers
(connection refused, 503, the route missing behind a proxy), the waiter checks the journal
heads through the metadata role now and then, slowly, and keeps trying the long-poll: push
comes back by itself when the notification server does.
"""

from __future__ import annotations

import random
import threading
import time

import httpx

from cubby.client.api import ApiClient, raise_for
from cubby.client.changes import Cursor
from cubby.client.push_status import PushReport
from cubby.client.tls import deferred_trust
from cubby.errors import CubbyError, NotFound

MIN_TIMEOUT = 30.0
MAX_TIMEOUT = 480.0
READ_MARGIN = 30.0
"""How long past its own timeout the client waits for a long-poll answer before giving up."""


class _NoPush(Exception):
    """The notification server did not answer this time."""


class _Closed(Exception):
    """`close` was called while a long-poll was in flight."""


class PushWaiter:
    """Raises `cubby.errors.NotFound` from the constructor when the server has no notification
    role (so `open_waiter` falls back to `PollWaiter`)."""

    def __init__(
        self,
        api: ApiClient,
        *,
        url: str | None = None,
        long_timeout: float = 240.0,
        fallback_min: float = 5.0,
        fallback_max: float = 60.0,
        report: PushReport | None = None,
    ) -> None:
        self._api = api
        self._report: PushReport = report or (lambda ok, detail: None)
        self._long = min(max(long_timeout, MIN_TIMEOUT), MAX_TIMEOUT)
        self._fallback_min = fallback_min
        self._fallback_max = fallback_max
        self._interval = fallback_min
        self._closed = threading.Event()
        self._wakeup = threading.Event()
        self.pushing = False
        """Whether the last wait was served by the notification server (for tests and status)."""
        self._http = self._client(url or api.role_url("notify"))
        try:
            resp = self._http.get("/api/v1/notify")
            if resp.status_code == 421 and url is None:  # not the notify role: ask where it is
                self._http.close()
                self._http = self._client(api.discover().get("notify", api.base_url))
                resp = self._http.get("/api/v1/notify")
        except (httpx.HTTPError, CubbyError) as exc:
            self._report(False, f"{self._http.base_url}: {exc}")
            return  # nobody answers yet: fall back until someone does
        if resp.status_code in (404, 421):
            self._http.close()
            raise NotFound("this server has no notification role", code="no_notify")

    def _client(self, base_url: str) -> httpx.Client:
        return httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=dict(self._api.http.headers),
            timeout=httpx.Timeout(MAX_TIMEOUT + READ_MARGIN, connect=10.0),
            verify=deferred_trust(),
        )

    def wait(self, cursor: Cursor, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._closed.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                if not cursor:  # nothing to subscribe to: the account's namespaces decide
                    raise _NoPush("empty cursor")
                changed = self._longpoll(cursor, left)
            except _NoPush as exc:
                self.pushing = False
                if cursor:  # an empty cursor needs no push: nothing is wrong
                    self._report(False, f"{self._http.base_url}: {exc}")
                if self._poll_once(cursor):
                    return True
                pause = min(self._interval * random.uniform(0.8, 1.2), max(0.0, deadline - time.monotonic()))
                self._interval = min(self._interval * 2, self._fallback_max)
                if self._wait_closed(pause):
                    return True
                continue
            self.pushing = True
            self._report(True, "")
            self._interval = self._fallback_min
            if changed is not None:
                return changed
        return True

    def _longpoll(self, cursor: Cursor, left: float) -> bool | None:
        """True/False when the wait is over, None to poll again."""
        server_timeout = min(max(left, MIN_TIMEOUT), self._long)
        read_timeout = min(left, server_timeout + READ_MARGIN)
        body = {"cursor": {str(ns): pos for ns, pos in cursor.items()}, "timeout": server_timeout}
        try:
            resp = self._post_interruptibly(body, read_timeout)
        except _Closed:
            return True
        except httpx.ReadTimeout:
            if self._closed.is_set():
                return True
            if read_timeout >= left - 0.01:
                return False  # the caller's own timeout ran out
            raise _NoPush("the notification server did not answer in time") from None
        except (httpx.HTTPError, RuntimeError) as exc:
            if self._closed.is_set():
                return True
            raise _NoPush(str(exc)) from exc
        if resp.status_code in (404, 421, 502, 503, 504):
            try:
                details = resp.json().get("details") or {}
            except ValueError:
                details = {}
            if resp.status_code == 404 and "ns_id" in details:
                return True  # a namespace of the cursor is gone for us: the account changed
            raise _NoPush(f"notification server answered {resp.status_code}")
        raise_for(resp)
        answer = resp.json()
        if {int(ns) for ns in answer.get("namespaces", cursor)} != set(cursor):
            return True
        if answer.get("changed"):
            return True
        backoff = float(answer.get("backoff") or 0.0)
        if backoff > 0 and self._wait_closed(min(backoff, max(0.0, left))):
            return True
        return None

    def _post_interruptibly(self, body: dict[str, object], read_timeout: float) -> httpx.Response:
        """POST the long-poll on a helper thread, so that `close` can end a wait at once (a
        blocking httpx call cannot be interrupted from another thread); the abandoned request
        ends on its own when the server answers or the client is closed."""
        outcome: list[httpx.Response | BaseException] = []
        done = threading.Event()

        def run() -> None:
            try:
                outcome.append(
                    self._http.post("/api/v1/notify/longpoll", json=body, timeout=httpx.Timeout(read_timeout, connect=10.0))
                )
            except BaseException as exc:  # handed over to the waiting thread
                outcome.append(exc)
            finally:
                done.set()
                self._wakeup.set()

        self._wakeup.clear()
        if self._closed.is_set():  # closed before the clear: its wake-up is gone with it
            raise _Closed()
        threading.Thread(target=run, name="cubby-longpoll", daemon=True).start()
        while not done.is_set():
            self._wakeup.wait()
            if self._closed.is_set() and not done.is_set():
                raise _Closed()
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _poll_once(self, cursor: Cursor) -> bool:
        """Read the heads through the metadata role; raises `Unavailable` if it is down too."""
        account = self._api.account()
        heads = {int(ns["ns_id"]): int(ns["head"]) for ns in account.get("namespaces", [])}
        return set(heads) != set(cursor) or any(heads[ns] > pos for ns, pos in cursor.items() if ns in heads)

    def _wait_closed(self, seconds: float) -> bool:
        return self._closed.wait(seconds)

    def close(self) -> None:
        self._closed.set()
        self._wakeup.set()
        try:
            self._http.close()
        except Exception:  # closing from another thread while a request is in flight
            pass
