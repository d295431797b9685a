"""`take_stop_signals`: SIGTERM stops a loop whose thread holds its events' locks most of the time.

A Python signal handler that sets a `threading.Event` deadlocks when the signal lands while the
main thread is inside that event's ``clear`` or ``wait`` (about a third of the signals sent to
the loop below did, before `cubby sync` took its signals on a thread of their own).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from tests.helpers.live_server import ROOT

LOOP = """
import threading, sys
from cubby.client.sync.signals import take_stop_signals
stop, trigger = threading.Event(), threading.Event()

def on_stop():
    stop.set()
    trigger.set()

take_stop_signals(on_stop)
print("looping", flush=True)
while not stop.is_set():
    trigger.clear()
    trigger.wait(0)
print("stopped", flush=True)
"""


def test_sigterm_stops_a_loop_that_holds_its_event_locks() -> None:
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", LOOP], stdout=subprocess.PIPE, text=True,
                                env={"PYTHONPATH": str(ROOT / "src")})
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "looping\n"
            time.sleep(0.05)  # well inside the loop (not a wait for a condition: any moment will do)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
            assert proc.stdout.read() == "stopped\n"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
