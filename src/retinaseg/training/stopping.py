"""A polite stop: SIGTERM, SIGINT or the end of the process that started a training end it between two batches.

A job scheduler, ``docker stop`` or a shutdown sends SIGTERM; DVC itself exits on SIGTERM
without passing it on, so its training would go on alone, unseen, and race the next run for
its checkpoint folder. Here the epoch under way is abandoned (its progress unit was never
written): the last unit saved is the last finished epoch, which the next ``dvc repro`` resumes
to the weights of an uninterrupted run.
"""

from __future__ import annotations

import signal
import threading

import keras

from retinaseg.training import starters

POLL_SECONDS = 0.5


class StopRequested(Exception):
    """Raised between two batches once a stop was asked for; ``exit_code`` is what the stage exits with."""

    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(reason)
        self.reason, self.exit_code = reason, exit_code


class PoliteStop(keras.callbacks.Callback):
    """While entered, turns SIGTERM and SIGINT, and the end of the parent process, into a ``StopRequested`` at
    the next batch or epoch boundary of ``fit``. Last among the callbacks, so an epoch that ends is saved first.
    A second signal ends the process at once, as the signal's default does."""

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None
        self.exit_code = 1
        self._previous: dict[int, object] = {}
        self._done = threading.Event()

    def __enter__(self) -> PoliteStop:
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            for number in (signal.SIGTERM, signal.SIGINT):
                self._previous[number] = signal.signal(number, self._on_signal)
        watched = starters.watched()
        threading.Thread(target=self._watch, args=(watched,), name="watch-parent", daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def request(self, reason: str, exit_code: int) -> None:
        if self.reason is None:
            self.reason, self.exit_code = reason, exit_code

    def _on_signal(self, number: int, frame) -> None:
        if self.reason is not None:  # a second signal: the impatient user's, or the scheduler's last word
            signal.signal(number, signal.SIG_DFL)
            signal.raise_signal(number)
        self.request(signal.Signals(number).name, 128 + number)

    def _watch(self, watched: list[tuple[int, int]]) -> None:
        while not self._done.wait(POLL_SECONDS):
            for child, parent in watched:
                if starters.parent_of(child) != parent:
                    self.request(f"the end of its parent process (pid {parent})", 1)
                    return

    def _check(self, *args, **kwargs) -> None:
        if self.reason is not None:
            raise StopRequested(self.reason, self.exit_code)

    on_train_begin = on_epoch_begin = on_train_batch_end = on_test_batch_end = on_epoch_end = _check
