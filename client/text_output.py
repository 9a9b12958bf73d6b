"""Terminal output of the ``maira-sae`` command line: aligned tables, JSON lines, and streamed
generation in one column per variant."""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Iterable, Sequence
from typing import TextIO

from maira_sae.client.results import TokenEvent, VariantResult


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO) -> None:
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    for row in [list(headers), ["-" * w for w in widths], *cells]:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out
        )


def print_json(data: object, out: TextIO) -> None:
    print(json.dumps(data, ensure_ascii=False), file=out)


def visible(text: str) -> str:
    return text.replace("\n", "\\n").replace("\t", "\\t")


class ColumnPrinter:
    """Streams tokens as rows of one column per variant: one row per decode step (the
    variants of one call share positions), then each variant's full report. The header, whose
    variant names wrap over as many lines as they need, is printed with the first event, so a
    call that fails at once prints nothing but its error."""

    def __init__(self, names: Sequence[str], out: TextIO) -> None:
        self.names = list(names)
        self.out = out
        columns = shutil.get_terminal_size((120, 24)).columns
        self.width = max(12, (columns - 8) // len(names) - 3)
        self.position: int | None = None
        self.row: dict[int, str] = {}

    def _line(self, first: str, cells: Sequence[str]) -> None:
        text = " | ".join(cell[: self.width].ljust(self.width) for cell in cells)
        print(f"{first:>6} | {text}".rstrip(), file=self.out, flush=True)

    def _flush_row(self) -> None:
        if self.position is not None:
            self._line(str(self.position), [self.row.get(i, "") for i in range(len(self.names))])
        self.row = {}

    def _header(self) -> None:
        chunks = [textwrap.wrap(name, self.width) or [""] for name in self.names]
        for i in range(max(len(c) for c in chunks)):
            self._line("pos" if i == 0 else "", [c[i] if i < len(c) else "" for c in chunks])
        self._line("", ["-" * self.width] * len(self.names))

    def run(self, events: Iterable[TokenEvent | VariantResult]) -> None:
        finished: list[VariantResult] = []
        for n, event in enumerate(events):
            if n == 0:
                self._header()
            if isinstance(event, VariantResult):
                finished.append(event)
                continue
            if event.position != self.position:
                self._flush_row()
                self.position = event.position
            self.row[event.variant_index] = visible(event.text)
        self._flush_row()
        for result in sorted(finished, key=lambda r: r.variant_index):
            name = self.names[result.variant_index]
            print(
                f"\n== {name}: {result.num_tokens} tokens, {result.finish_reason.value} ==",
                file=self.out,
            )
            print(result.text, file=self.out)
            for phrase in result.phrases:
                boxes = "; ".join(
                    f"({b.original.x_min:.2f},{b.original.y_min:.2f})-"
                    f"({b.original.x_max:.2f},{b.original.y_max:.2f})"
                    for b in phrase.boxes
                )
                print(f"  - {phrase.text} {boxes}".rstrip(), file=self.out)
