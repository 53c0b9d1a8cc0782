"""Progress of long work: told how much there is and how much is done (the CLI draws a
bar); None where nobody is watching."""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    """Told how much work there is and how much is done; the CLI draws it as a bar."""

    def start(self, total: int | None) -> None: ...

    def advance(self, n: int) -> None: ...


Progress = Reporter | None


def begin(progress: Progress, total: int | None) -> None:
    if progress is not None:
        progress.start(total)


def tick(progress: Progress, n: int = 1) -> None:
    if progress is not None:
        progress.advance(n)
