"""Stopping a run: signals (SIGTERM/SIGINT) and divergence."""

from __future__ import annotations


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint was written. ``exit_code`` is 0 or 130."""

    def __init__(self, signum: int, env_steps: int):
        import signal

        self.signum, self.env_steps = signum, env_steps
        self.exit_code = 0 if signum == signal.SIGTERM else 130
        super().__init__(f"{signal.Signals(signum).name} at env step {env_steps}")


class Diverged(RuntimeError):
    """A loss or a parameter became NaN/inf."""


class SignalFlag:
    """Records SIGTERM/SIGINT instead of dying mid-chunk; a second Ctrl-C
    interrupts at once (KeyboardInterrupt)."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        import signal

        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class RunFailed(RuntimeError):
    """The run cannot go on: an environment or an actor thread raised (exit code 1)."""
