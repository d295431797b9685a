"""Capacity of one notification process: memory per idle connection and fan-out latency.

One `cubby serve --role notify` process (uvicorn + Starlette, uvloop, httptools, sans-I/O
WebSockets) holds N + 1,001 idle subscriptions opened by load-generator processes on the same
machine (spread over loopback source addresses 127.0.0.2.., RLIMIT_NOFILE raised): N on one
"big" namespace, 1,000 on a second and 1 on a third. A metadata process commits through HTTP
and the two processes are joined by Redis (the in-process broker when Redis is not there).

For each N (doubling from 10,000 up to --max) it reports the notification process's RSS delta
per connection, and the time from sending a commit to its arrival at the subscribers of the
1-, 1,000- and N-member namespaces (median and 99th percentile of the per-subscriber
latencies, and the time until the last one), then the ratios as N doubles. Connections are
added incrementally: the step to 2N opens N more.

    .venv/bin/python bench/notify_capacity.py --transport longpoll --max 100000
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing as mp
import os
import platform
import resource
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.helpers.live_server import LiveServer

IP_BIND_ADDRESS_NO_PORT = 24
PER_SOURCE_IP = 25_000
FD_LIMIT = 400_000


def raise_nofile(n: int = FD_LIMIT) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(n, soft), max(n, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the load generator (runs in worker processes) ----------------------------------------------
class LongPollClient(asyncio.Protocol):
    __slots__ = ("buf", "group", "ns", "pos", "ready", "transport", "w")

    def __init__(self, w: Worker, group: int, ns: int, pos: int) -> None:
        self.w, self.group, self.ns, self.pos = w, group, ns, pos
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        body = b'{"cursor":{"%d":%d},"timeout":480}' % (self.ns, self.pos)
        self.transport.write(self.w.lp_heads[self.group] + b"Content-Length: %d\r\n\r\n" % len(body) + body)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].lower()
        i = head.find(b"content-length:")
        length = int(head[i + 15 :].split(b"\r\n", 1)[0])
        if len(self.buf) < end + 4 + length:
            return
        body, self.buf = self.buf[end + 4 : end + 4 + length], self.buf[end + 4 + length :]
        now = time.monotonic()
        answer = json.loads(body)
        if answer.get("changed"):
            self.w.arrivals[self.group].append(now)
            self.pos = int(answer["heads"][str(self.ns)])
        elif "code" in answer:
            self.w.errors += 1
            print("error answer:", answer, file=sys.stderr, flush=True)
            return
        self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        self.w.lost += 1


class WsClient(asyncio.Protocol):
    __slots__ = ("buf", "group", "ns", "pos", "transport", "upgraded", "w")

    def __init__(self, w: Worker, group: int, ns: int, pos: int) -> None:
        self.w, self.group, self.ns, self.pos = w, group, ns, pos
        self.buf = b""
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.w.ws_heads[self.group])  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.buf = self.buf[end + 4 :]
            self.upgraded = True
            payload = b'{"cursor":{"%d":%d}}' % (self.ns, self.pos)
            # A client frame must be masked; an all-zero key leaves the payload as it is.
            self.transport.write(bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)  # type: ignore[attr-defined]
        while len(self.buf) >= 2:
            n = self.buf[1] & 0x7F
            off = 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n, off = int.from_bytes(self.buf[2:4], "big"), 4
            if len(self.buf) < off + n:
                return
            payload, self.buf = self.buf[off : off + n], self.buf[off + n :]
            if b'"changed","heads"' in payload or b'"type":"changed"' in payload:
                self.w.arrivals[self.group].append(time.monotonic())

    def connection_lost(self, exc: Exception | None) -> None:
        self.w.lost += 1


class Worker:
    def __init__(self, port: int, tokens: list[str], transport: str) -> None:
        self.port = port
        self.tokens = tokens
        self.transport = transport
        self.arrivals: list[list[float]] = [[], [], []]
        self.errors = 0
        self.lost = 0
        self.opened = 0
        self.clients: list[asyncio.Protocol] = []

        self.lp_heads = [self.lp_head(t) for t in tokens]
        self.ws_heads = [self.ws_head(t) for t in tokens]

    @staticmethod
    def lp_head(token: str) -> bytes:
        return (
            b"POST /api/v1/notify/longpoll HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n"
        )

    @staticmethod
    def ws_head(token: str) -> bytes:
        return (
            b"GET /api/v1/notify/ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
        )

    async def open(self, count: int, group: int, ns: int, pos: int, source_ips: list[str]) -> None:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(200)
        cls = LongPollClient if self.transport == "longpoll" else WsClient

        async def one(ip: str) -> None:
            async with sem:
                for attempt in range(20):
                    sock = socket.socket()
                    sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                    sock.setblocking(False)
                    try:
                        sock.bind((ip, 0))
                        await loop.sock_connect(sock, ("127.0.0.1", self.port))
                    except OSError:
                        sock.close()
                        await asyncio.sleep(0.05 * (attempt + 1))
                        continue
                    _, proto = await loop.create_connection(lambda: cls(self, group, ns, pos), sock=sock)
                    self.clients.append(proto)
                    self.opened += 1
                    return
                self.errors += 1

        base = self.opened
        await asyncio.gather(*(one(source_ips[(base + i) // PER_SOURCE_IP % len(source_ips)]) for i in range(count)))


def worker_main(conn: Any, port: int, tokens: list[str], transport: str, source_ips: list[str]) -> None:
    raise_nofile()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def run() -> None:
        w = Worker(port, tokens, transport)
        loop = asyncio.get_running_loop()
        while True:
            cmd = await loop.run_in_executor(None, conn.recv)
            if cmd[0] == "open":
                _, count, group, ns, pos = cmd
                await w.open(count, group, ns, pos, source_ips)
                conn.send(("opened", w.opened, w.errors))
            elif cmd[0] == "arrivals":
                conn.send(("arrivals", [list(a) for a in w.arrivals], w.errors, w.lost))
                w.arrivals = [[], [], []]
            elif cmd[0] == "quit":
                for c in w.clients:
                    c.transport.close()  # type: ignore[attr-defined]
                conn.send(("bye",))
                return

    asyncio.run(run())


# -- the coordinator --------------------------------------------------------------------------
def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def fd_limit_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return FD_LIMIT


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))] if s else float("nan")


def machine() -> dict[str, Any]:
    mem = next(
        (int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")),
        0,
    )
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
        platform.processor(),
    )
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem, "python": platform.python_version(),
            "kernel": platform.release(), "load_avg": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--transport", choices=["longpoll", "ws"], default="longpoll")
    ap.add_argument("--start", type=int, default=10_000)
    ap.add_argument("--max", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="commits per step to the 1- and 1,000-member namespaces")
    ap.add_argument("--big-rounds", type=int, default=2, help="commits per step to the N-member namespace")
    ap.add_argument("--front", choices=["lean", "asgi"], default="lean",
                    help="the notification process's server: lean (cubby.notify.wire) or asgi (uvicorn + Starlette)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    raise_nofile()

    tmp = Path(tempfile.mkdtemp(prefix="cubby-notify-bench-"))
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
        broker = f"redis://127.0.0.1:6379/0?prefix=bench{uuid.uuid4().hex[:8]}"
    except OSError:
        broker = "memory"
    db = f"sqlite:///{tmp / 'meta.db'}"
    env = {"CUBBY_LOG_LEVEL": "warning"}
    # The load comes from a few loopback addresses and three tokens: lift the per-address,
    # per-token and global connection caps that guard a real server against such a crowd.
    unlimited = ["--max-connections-per-address", "1000000", "--max-waits-per-token", "1000000", "--idle-timeout", "3600"]
    if broker == "memory":
        meta = notify = LiveServer(tmp / "all", db_url=db, role="all", extra_args=unlimited)
        servers = [meta]
    else:
        meta = LiveServer(tmp / "meta", db_url=db, role="meta", extra_args=["--broker", broker], env=env)
        notify = LiveServer(
            tmp / "notify", db_url=db, role="notify", extra_args=["--broker", broker, "--notify-front", args.front, *unlimited],
            env=env,
        )
        servers = [meta, notify]
    # The server processes inherit the raised open-file limit from this process.
    for s in servers:
        s.start()
    assert notify.proc is not None
    pid = notify.proc.pid

    # Without CAP_SYS_RESOURCE the hard open-file limit cannot be raised: one process then
    # holds at most that many connections, and the steps stop below it.
    fd_limit = fd_limit_of(pid)
    cap = fd_limit - 1001 - 100
    if args.max > cap:
        print(f"the notification process may open {fd_limit} files: N capped at {cap}", file=sys.stderr, flush=True)
        args.max = cap

    tokens = [meta.add_user(f"bench{g}") for g in range(3)]
    apis = [httpx.Client(base_url=meta.url, headers={"Authorization": f"Bearer {t}"}, timeout=120) for t in tokens]
    nss = [int(a.get("/api/v1/account").json()["root_ns"]) for a in apis]

    def head(g: int) -> int:
        return int(apis[g].get("/api/v1/account").json()["namespaces"][0]["head"])

    def subscribers() -> int:
        # The accept queue can overflow while thousands of connections open: ask again.
        while True:
            try:
                auth = {"Authorization": f"Bearer {tokens[0]}"}
                return int(httpx.get(notify.url + "/api/v1/notify", headers=auth, timeout=120).json()["subscribers"])
            except httpx.HTTPError:
                time.sleep(0.5)

    n_ips = max(2, (args.max + 1001) // PER_SOURCE_IP + 2)
    source_ips = [f"127.0.0.{i + 2}" for i in range(n_ips)]
    pipes, procs = [], []
    ctx = mp.get_context("spawn")
    for w in range(args.workers):
        a, b = ctx.Pipe()
        # Each worker uses its own source addresses, so their ephemeral ports never collide.
        ips = source_ips[w::args.workers]
        p = ctx.Process(target=worker_main, args=(b, notify.port, tokens, args.transport, ips), daemon=True)
        p.start()
        pipes.append(a)
        procs.append(p)

    def open_conns(count: int, group: int) -> None:
        pos = head(group)
        share = [count // len(pipes) + (1 if i < count % len(pipes) else 0) for i in range(len(pipes))]
        for pipe, c in zip(pipes, share):
            if c:
                pipe.send(("open", c, group, nss[group], pos))
        for pipe, c in zip(pipes, share):
            if c:
                pipe.recv()

    def wait_for(total: int, stall: float = 20.0) -> float:
        """Until ``total`` subscriptions are held, or none were added for ``stall`` seconds
        (some connections failed to open: the figures then use the count actually held)."""
        t0 = last_change = time.monotonic()
        seen = -1
        while (now := subscribers()) < total:
            if now != seen:
                seen, last_change = now, time.monotonic()
            elif time.monotonic() - last_change > stall:
                print(f"only {now}/{total} subscribed; going on with those", file=sys.stderr, flush=True)
                break
            if os.environ.get("BENCH_DEBUG"):
                print(f"{now}/{total} subscribed", file=sys.stderr, flush=True)
            time.sleep(0.2)
        return time.monotonic() - t0

    def commit_round(group: int, expect: int, total: int) -> dict[str, float]:
        print(f"commit group {group} expecting {expect}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        r = apis[group].post("/api/v1/files/mkdir", json={"path": f"/d{uuid.uuid4().hex}"})
        r.raise_for_status()
        arrivals: list[float] = []
        last_change = time.monotonic()
        while len(arrivals) < expect:
            time.sleep(0.05 if expect > 1 else 0.005)
            before = len(arrivals)
            for pipe in pipes:
                pipe.send(("arrivals",))
            for pipe in pipes:
                _, arr, _, _ = pipe.recv()
                arrivals.extend(arr[group])
            if len(arrivals) != before:
                last_change = time.monotonic()
            elif time.monotonic() - last_change > 20:
                print(f"only {len(arrivals)}/{expect} woken", file=sys.stderr, flush=True)
                break
        lat = sorted(a - t0 for a in arrivals)
        resub = wait_for(total)
        return {"first": lat[0], "median": statistics.median(lat), "p99": pct(lat, 0.99), "last": lat[-1],
                "resubscribe_s": resub}

    time.sleep(1.0)
    baseline = rss_bytes(pid)
    steps: list[dict[str, Any]] = []
    info = machine()
    print(json.dumps({"machine": info, "broker": broker.split("?")[0], "transport": args.transport, "front": args.front}), flush=True)
    open_conns(1, 0)
    open_conns(1000, 1)
    held_big = 0
    n = args.start
    while n <= args.max:
        t_open = time.monotonic()
        open_conns(n - held_big, 2)
        held_big = n
        wait_for(n + 1001)
        opened_s = time.monotonic() - t_open
        time.sleep(1.0)
        total = subscribers()
        big = total - 1001
        rss = rss_bytes(pid)
        result: dict[str, Any] = {
            "N": n, "connections": total, "big_namespace_subscribers": big, "rss_bytes": rss, "rss_delta_bytes": rss - baseline,
            "bytes_per_connection": round((rss - baseline) / total), "open_seconds": round(opened_s, 1),
        }
        for label, group, expect, rounds in (("1", 0, 1, args.rounds), ("1000", 1, 1000, args.rounds), ("N", 2, big, args.big_rounds)):
            runs = [commit_round(group, expect, total) for _ in range(rounds)]
            lasts = [r["last"] for r in runs]
            result[f"reach_{label}"] = {
                "last_median_s": round(statistics.median(lasts), 4), "last_p99_s": round(pct(lasts, 0.99), 4),
                "subscriber_median_s": round(statistics.median(r["median"] for r in runs), 4),
                "subscriber_p99_s": round(statistics.median(r["p99"] for r in runs), 4),
                "resubscribe_s": round(statistics.median(r["resubscribe_s"] for r in runs), 2),
            }
        steps.append(result)
        print(json.dumps(result), flush=True)
        partial = args.out or ROOT / "bench" / "results" / f"notify_capacity_{args.transport}_{args.front}.json"
        partial.write_text(json.dumps({"machine": info, "transport": args.transport, "front": args.front, "partial": True,
                                       "baseline_rss_bytes": baseline, "steps": steps}, indent=2) + "\n")
        if n == args.max:
            break
        n = min(n * 2, args.max)

    ratios = []
    for a, b in itertools.pairwise(steps):
        ratios.append({
            "from_N": a["N"], "to_N": b["N"], "N_ratio": round(b["N"] / a["N"], 2),
            "bytes_per_connection_ratio": round(b["bytes_per_connection"] / a["bytes_per_connection"], 2),
            "reach_N_last_ratio": round(b["reach_N"]["last_median_s"] / a["reach_N"]["last_median_s"], 2),
            "reach_1_ratio": round(b["reach_1"]["last_median_s"] / max(a["reach_1"]["last_median_s"], 1e-6), 2),
        })
    last = steps[-1]
    per_conn = last["bytes_per_connection"]
    # Memory is the binding limit measured here; the estimate assumes the per-connection cost
    # stays flat beyond the largest N measured (see the ratios).
    per_process = int((2 * 2**30 - baseline) / per_conn) if per_conn > 0 else last["connections"]
    report = {
        "machine": info, "transport": args.transport, "front": args.front, "broker": broker.split("?")[0],
        "server_stack": "uvicorn + Starlette, uvloop, httptools, websockets-sansio" if args.front == "asgi"
        else "cubby.notify.wire (asyncio Protocol + httptools), uvloop",
        "baseline_rss_bytes": baseline, "server_open_file_limit": fd_limit, "steps": steps, "ratios_as_N_doubles": ratios,
        "estimate_1M": {
            "connections_per_process_within_2GiB": per_process,
            "largest_N_measured": last["connections"],
            "processes_for_1M": -(-1_000_000 // per_process),
        },
    }
    print(json.dumps({"ratios": ratios, "estimate_1M": report["estimate_1M"]}), flush=True)
    out = args.out or ROOT / "bench" / "results" / f"notify_capacity_{args.transport}_{args.front}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    for pipe in pipes:
        pipe.send(("quit",))
        pipe.recv()
    for s in servers:
        s.stop(kill=True)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
