"""How `cubby sync` hears SIGINT and SIGTERM: on a thread of its own, never in a signal handler.

A Python signal handler runs in the main thread between two bytecodes, wherever that thread is.
The sync loop's main thread spends its life in `threading.Event.wait` and ``clear``, which hold
the event's (non re-entrant) lock for a few bytecodes; a handler that sets that event at such a
moment waits for a lock its own thread holds, and the process never exits. So the signals are
blocked in every thread and one thread takes them with `signal.sigwait`, then calls the stop
function as ordinary code. The mask is inherited by threads started later, and only by those:
`take_stop_signals` must run before the process starts any thread.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


def take_stop_signals(on_stop: Callable[[], None]) -> None:
    """From now on, each SIGINT or SIGTERM calls ``on_stop`` (on the ``cubby-signals`` thread;
    again for a second signal, so it must be idempotent) instead of interrupting the process."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    def take() -> None:
        while True:
            signal.sigwait(STOP_SIGNALS)
            on_stop()

    threading.Thread(target=take, name="cubby-signals", daemon=True).start()
