"""Progress bars for the export's phases, so a long gate shows where its time goes.

    progress = Progress()                                   # bars only when stderr is a terminal
    with progress.phase("fp32 parity", total=runs) as bar:  # one bar per phase, kept on screen
        session = TickingSession(session, bar)              # every onnxruntime run ticks it

Why a session proxy: the gate scores through `service.onnx_scoring` and `training.reward.heads`,
the exact code the service runs; wrapping the session makes those loops report progress without
them knowing about bars. The cost of a phase is its number of model runs, so that is what the bars
count (batches of PyTorch or onnxruntime, or calibration batches).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm


class Progress:
    """One bar per phase; ``enabled`` True always, False never, None when stderr is a terminal.

    ``seconds`` keeps each phase's wall time (summed over repeats), for the manifest's gate record."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = enabled
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str, total: int) -> Iterator[tqdm]:
        """A bar of ``total`` model runs named ``name``, closed (and left on screen) at the end."""
        disable = None if self.enabled is None else not self.enabled
        bar = tqdm(total=total, desc=name, unit="run", disable=disable, file=sys.stderr, dynamic_ncols=True)
        started = time.perf_counter()
        try:
            yield bar
        finally:
            bar.close()
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 2)


class TickingSession:
    """An onnxruntime session whose every ``run`` ticks ``bar``; everything else is the session's."""

    def __init__(self, session: Any, bar: tqdm) -> None:
        self._session = session
        self._bar = bar

    def run(self, *args: Any, **kwargs: Any) -> Any:
        outputs = self._session.run(*args, **kwargs)
        self._bar.update(1)
        return outputs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)
