#!/usr/bin/env python3
"""Set up cubby with nothing but the system Python, then serve or test.

    python3 scripts/dev.py serve [cubby serve options]   # install, then run the server
    python3 scripts/dev.py test  [pytest options]        # install, then ruff, mypy and every test
    python3 scripts/dev.py test --fast [pytest options]  # the same without the tests marked slow

It makes ``.venv`` beside this repository (again whenever pyproject.toml changes), installs
cubby with its test extras into it, and runs the command there. Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".cubby-installed"


def _bin(name: str) -> Path:
    return VENV / ("Scripts" if os.name == "nt" else "bin") / name


def ensure_venv() -> None:
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == want and _bin("cubby").exists():
        return
    if not _bin("python").exists():
        print(f"creating {VENV} ...", file=sys.stderr, flush=True)
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)
    print("installing cubby and its dependencies (first run only) ...", file=sys.stderr, flush=True)
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"  # the tests use Debian's chromium
    pip = [str(_bin("python")), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    subprocess.run(pip + ["-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(want)


def ensure_debian(binary: str, package: str) -> None:
    """Install a Debian package the tests need (Debian's ``chromium`` for the browser tests,
    never a browser download; ``memcached`` for the metadata cache tests) when its program is
    missing and we may (root with apt-get)."""
    if Path(binary).exists() or not hasattr(os, "geteuid") or os.geteuid() != 0 or not Path("/usr/bin/apt-get").exists():
        return
    print(f"installing {package} for the tests (apt-get) ...", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.call(["apt-get", "install", "-y", "-q", package], env=env) != 0:
        subprocess.call(["apt-get", "update", "-q"], env=env)
        subprocess.call(["apt-get", "install", "-y", "-q", package], env=env)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("serve", "test"):
        print(__doc__, file=sys.stderr)
        return 2
    ensure_venv()
    cmd, rest = argv[0], argv[1:]
    if cmd == "serve":
        args = [str(_bin("cubby")), "serve", *rest]
        if not any(a == "--data" or a.startswith("--data=") or a == "--db" for a in rest):
            args += ["--data", str(ROOT / "cubby-data")]
        os.execv(args[0], args)
    ensure_debian("/usr/bin/chromium", "chromium")
    ensure_debian("/usr/bin/memcached", "memcached")
    ensure_debian("/usr/sbin/haproxy", "haproxy")  # the cluster tests put it in front of the roles
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    os.chdir(ROOT)
    fast = "--fast" in rest
    rest = [a for a in rest if a != "--fast"]
    # Style and types first: they take seconds, and a failure there fails the run like a test.
    for check in (["ruff", "check", "src", "tests", "bench", "scripts"], ["mypy", "src"]):
        print(f"$ {' '.join(check)}", file=sys.stderr, flush=True)
        if subprocess.call([str(_bin(check[0])), *check[1:]]) != 0:
            return 1
    # The tests start hundreds of cubby processes; with PYTHONDONTWRITEBYTECODE set (as on the
    # CI machines) each would compile the package from source again (~0.2 CPU s a start).
    subprocess.call([str(_bin("python")), "-m", "compileall", "-q", "src"], stdout=subprocess.DEVNULL)
    # Four workers on two cores: the suite waits too (processes starting, servers answering,
    # clients converging through cut links), and the extra workers fill those waits. On the
    # 2-core CI machine of 2026-12-04 three ran in 597 s against 664-741 s with two; on the
    # VM of 2026-12-07 four ran in 425 s against 466 s with three, the same tree, passing whole.
    workers = os.environ.get("CUBBY_TEST_WORKERS", "4")
    args = [str(_bin("python")), "-m", "pytest", "-n", workers, "--dist", "loadgroup", "-q", "-p", "no:cacheprovider", "--durations=20"]
    if fast:
        args += ["-m", "not slow"]
    return subprocess.call(args + rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
