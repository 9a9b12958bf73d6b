"""Every ErrorInfo reason the server can send is in the README's table of reasons."""

from __future__ import annotations

import re
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[3]
REASON_LINE = re.compile(r"reason|_error_info\(")
CODE_WORD = re.compile(r'"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|[A-Z]{4,})"')


def reasons_in_the_server() -> set[str]:
    found = set()
    for path in (ROOT / "server").rglob("*.py"):
        for line in path.read_text().splitlines():
            if REASON_LINE.search(line):
                found.update(CODE_WORD.findall(line))
    return found


def test_every_reason_is_documented():
    reasons = reasons_in_the_server()
    generic = {code.name for code in grpc.StatusCode}
    assert {"FIELD_REQUIRED", "LIMIT_EXCEEDED", "SAE_NOT_FOUND", "QUEUE_FULL"} <= reasons
    readme = (ROOT / "README.md").read_text()
    table = set(re.findall(r"^\| `([A-Z_]+)`(?:, `([A-Z_]+)`)? \|", readme, re.MULTILINE))
    documented = {reason for row in table for reason in row if reason}
    assert reasons - generic - documented == set()
