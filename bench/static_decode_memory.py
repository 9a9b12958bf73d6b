"""Idle resident memory of a demo server on the CPU, by decode path and sizing.

    python -m bench.static_decode_memory

Starts ``maira-sae-server serve`` on the demo checkpoint three times and reads its VmRSS once
it serves (after the warm-up): the dynamic path; the static path with the default limits (32
rows of the model's 6144-position context); the static path sized by small limits (8 rows,
prompts of at most 2048 tokens, 256 new tokens). A server that refuses to start is reported
with its message. Figures are absolute (MiB), from one start each.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.reliability

from bench.harness import bench_arguments, emit, machine
from tests.reliability._support import ServerProcess

CASES: dict[str, dict[str, Any]] = {
    "dynamic": {"batching": {"decode_path": "dynamic"}},
    "static_default_limits": {"batching": {"decode_path": "static"}},
    "static_small_limits": {
        "batching": {"decode_path": "static", "max_decode_rows": 8},
        "limits": {"max_prompt_tokens": 2048, "max_new_tokens": 256, "default_max_new_tokens": 64},
    },
}


def idle_rss(sections: dict[str, Any], workdir: Path) -> dict[str, Any]:
    cache = Path(".cache/demo-checkpoint").resolve()
    config = {
        "serving": {"host": "127.0.0.1"},
        "model": {"demo": True, "demo_dir": str(cache)},
        **sections,
    }
    server = ServerProcess(config, workdir)
    try:
        server.start(timeout_s=600)
    except AssertionError:
        lines = [line for line in server.stderr.splitlines() if line.startswith("{")]
        messages = [json.loads(line) for line in lines]
        refusal = next((m for m in messages if m.get("event") == "startup_failed"), None)
        return {"started": False, "refusal": refusal and refusal.get("error")}
    try:
        warnings = [
            json.loads(line)
            for line in server.stderr.splitlines()
            if line.startswith("{") and '"static_decode' in line
        ]
        return {
            "started": True,
            "idle_rss_mib": round(server.rss_kib() / 1024, 1),
            "static_decode_lines": warnings,
        }
    finally:
        server.stop()


def main() -> None:
    args = bench_arguments(__doc__.split("\n")[0])
    results = {}
    for name, sections in CASES.items():
        with tempfile.TemporaryDirectory(prefix="static-memory-") as workdir:
            results[name] = idle_rss(sections, Path(workdir))
    emit({"benchmark": "static_decode_memory", "machine": machine(), "cases": results}, args.out)


if __name__ == "__main__":
    main()
