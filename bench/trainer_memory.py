"""The SAE trainer's peak memory (VmHWM) when it streams activation stores of 1x, 4x and 16x the
tokens through the same shuffle buffer: synthetic bf16 activations at d_model 4096, written as
stores of 50k-token shards (1x = 50k tokens = 410 MB; 16x = 6.6 GB on disk).

Each training run is a fresh subprocess that reports its own ``VmHWM`` from /proc/self/status,
so one run's allocations cannot hide another's. The run is short (a few steps of a small
dictionary) but crosses shuffle windows, so it reads the store as a long run would. Target:
the peak at 16x within 1.2x of the peak at 1x. ``--quick`` uses 1/10 of the tokens.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.harness import at_most, check, emit, machine

D_MODEL = 4096
BASE_TOKENS = 50_000
SCALES = (1, 4, 16)
ITEM_TOKENS = 1_000  # rows per synthetic "study"
SHUFFLE_BUFFER_GB = 0.05  # 6.1k rows: the 30 steps of 256 rows read two windows
TRAINING = {"d_sae": 1024, "k": 32, "batch_size": 256, "steps": 30, "eval_tokens": 1024}
_VMHWM = re.compile(r"^VmHWM:\s*(\d+) kB$", re.MULTILINE)


def write_store(folder: Path, tokens: int, *, seed: int = 0) -> int:
    """A store of ``tokens`` synthetic bf16 rows; returns its size in bytes."""
    from maira_sae.sae.activation_store import StoreWriter

    items = tokens // ITEM_TOKENS
    writer = StoreWriter(
        folder,
        part=0,
        num_parts=1,
        num_items=items,
        settings={"synthetic": seed},
        d_model=D_MODEL,
        dtype=torch.bfloat16,
        columns=("item",),
        shard_rows=BASE_TOKENS,
    )
    generator = torch.Generator().manual_seed(seed)
    block = torch.randn(ITEM_TOKENS, D_MODEL, generator=generator) + 0.5
    for item in range(items):  # a shifted copy per item: cheap to make, distinct rows
        rows = block.roll(item, dims=0) * (1 + item % 7 / 10)
        writer.add_item(rows.to(torch.bfloat16), {"item": torch.full((ITEM_TOKENS,), item)})
    writer.finish()
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def train_in_this_process(store: Path) -> dict[str, Any]:
    """The child: train from ``store`` and report the process's peak resident memory."""
    from maira_sae.sae.activation_store import StoreReader
    from maira_sae.sae.training import MatryoshkaTrainingConfig, train_matryoshka_sae

    after_import = _peak_kib()
    reader = StoreReader(store)
    d_sae = TRAINING["d_sae"]
    config = MatryoshkaTrainingConfig(
        d_model=D_MODEL,
        group_sizes=(d_sae // 4, d_sae // 4, d_sae // 2),
        k=TRAINING["k"],
        steps=TRAINING["steps"],
        batch_size=TRAINING["batch_size"],
        warmup_steps=5,
        threshold_start_step=10,
        eval_tokens=TRAINING["eval_tokens"],
        shuffle_buffer_gb=SHUFFLE_BUFFER_GB,
    )
    _, report = train_matryoshka_sae(reader, config, progress=False)
    return {
        "tokens": len(reader),
        "peak_rss_mib": _peak_kib() / 1024,
        "peak_rss_after_imports_mib": after_import / 1024,
        "final_loss": report.final_loss,
        "seconds": report.seconds,
    }


def run(*, quick: bool) -> dict[str, Any]:
    base = BASE_TOKENS // 10 if quick else BASE_TOKENS
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="trainer-memory-") as work:
        for scale in SCALES:
            store = Path(work) / f"store-{scale}x"
            store_bytes = write_store(store, scale * base)
            child = subprocess.run(
                [sys.executable, "-m", "bench.trainer_memory", "--child", str(store)],
                capture_output=True,
                text=True,
                check=True,
            )
            runs[f"{scale}x"] = {"store_bytes": store_bytes, **json.loads(child.stdout)}
            shutil.rmtree(store)
    peaks = {name: result["peak_rss_mib"] for name, result in runs.items()}
    return {
        "bench": "trainer_memory",
        "d_model": D_MODEL,
        "dtype": "bfloat16",
        "shuffle_buffer_gb": SHUFFLE_BUFFER_GB,
        "training": TRAINING,
        "runs": runs,
        "machine": machine(),
        "checks": [
            check(
                "peak_rss_16x_over_1x",
                peaks["16x"] / peaks["1x"],
                at_most(1.2),
                peak_rss_mib=peaks,
            ),
            check("peak_rss_4x_over_1x", peaks["4x"] / peaks["1x"], None),
        ],
    }


def _peak_kib() -> int:
    match = _VMHWM.search(Path("/proc/self/status").read_text(encoding="ascii"))
    assert match, "no VmHWM in /proc/self/status (Linux only)"
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1/10 of the tokens")
    parser.add_argument("--out", type=Path, help="also write the JSON object to this file")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child is not None:
        print(json.dumps(train_in_this_process(arguments.child)))
        return
    emit(run(quick=arguments.quick), arguments.out)


if __name__ == "__main__":
    main()
