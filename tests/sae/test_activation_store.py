"""The activation store (shards + manifests) and the trainer streaming from it."""

from __future__ import annotations

import dataclasses
import json
import os
import stat

import pytest
import torch

from maira_sae.sae.activation_store import (
    MANIFEST_FILE,
    StoreReader,
    StoreWriter,
    item_range,
    open_store,
    part_manifest_path,
)
from maira_sae.sae.activation_stream import ShuffledStream, TensorRows
from maira_sae.sae.training import CHECKPOINT_FILE, train_matryoshka_sae
from tests.sae.test_training import config, planted_activations

D_MODEL = 16
COLUMNS = ("item", "row")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def items(count: int, seed: int = 0) -> list[torch.Tensor]:
    """``count`` items of 3..40 rows each."""
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(3, 41, (count,), generator=generator).tolist()
    return [torch.randn(size, D_MODEL, generator=generator) + 1.0 for size in sizes]


def write_part(store, all_items, part, num_parts, *, shard_rows=50, stop_after=None):
    writer = StoreWriter(
        store,
        part=part,
        num_parts=num_parts,
        num_items=len(all_items),
        settings={"source": "test"},
        d_model=D_MODEL,
        dtype=torch.float32,
        columns=COLUMNS,
        shard_rows=shard_rows,
    )
    todo = range(writer.resume_item, writer.manifest.end_item)
    for written, index in enumerate(todo):
        if stop_after is not None and written == stop_after:
            return writer
        rows = all_items[index]
        writer.add_item(
            rows,
            {"item": torch.full((len(rows),), index), "row": torch.arange(len(rows))},
        )
    writer.finish()
    return writer


def test_parts_fill_one_store_in_the_order_of_one_writer(tmp_path):
    data = items(25)
    for part in (2, 0, 1):  # any order
        write_part(tmp_path / "three", data, part, 3)
    write_part(tmp_path / "one", data, 0, 1)
    three, one = StoreReader(tmp_path / "three"), StoreReader(tmp_path / "one")
    assert len(three) == len(one) == sum(len(rows) for rows in data)
    assert torch.equal(three.read(0, len(three)), torch.cat(data))
    assert torch.equal(three.read(0, len(three), "item"), one.read(0, len(one), "item"))
    manifest = open_store(tmp_path / "three")
    assert manifest.complete and (manifest.num_items, manifest.rows) == (25, len(three))
    starts = [shard.first_item for shard in manifest.shards]
    ends = [shard.end_item for shard in manifest.shards]
    assert starts == [0, *ends[:-1]] and ends[-1] == 25  # contiguous, whole items
    assert all(shard.rows >= 50 for shard in manifest.shards if shard.end_item not in (8, 16, 25))
    assert [list(item_range(part, 3, 25)) for part in range(3)] == [
        list(range(0, 8)),
        list(range(8, 16)),
        list(range(16, 25)),
    ]
    assert three.read(30, 90).shape == (60, D_MODEL)  # across shards


def test_an_incomplete_store_says_which_parts_are_missing(tmp_path):
    data = items(10)
    write_part(tmp_path, data, 1, 3)
    write_part(tmp_path, data, 0, 3, stop_after=2)
    with pytest.raises(ValueError, match=r"missing \[2\], unfinished \[0\]"):
        open_store(tmp_path)
    assert not (tmp_path / MANIFEST_FILE).exists()


def test_a_rerun_keeps_checked_shards_and_redoes_a_corrupt_one(tmp_path):
    data = items(20)
    first = write_part(tmp_path, data, 0, 1, shard_rows=40, stop_after=12)
    finished = len(first.manifest.shards)
    assert finished >= 3
    second = write_part(tmp_path, data, 0, 1, shard_rows=40)
    assert second.skipped_shards == finished
    assert torch.equal(StoreReader(tmp_path).read(0, sum(map(len, data))), torch.cat(data))

    manifest = open_store(tmp_path)
    corrupt = tmp_path / manifest.shards[2].file
    corrupt.write_bytes(corrupt.read_bytes()[:-8] + b"\0" * 8)
    (tmp_path / MANIFEST_FILE).unlink()
    third = write_part(tmp_path, data, 0, 1, shard_rows=40)
    assert third.skipped_shards == 2  # the shards before the corrupt one
    assert torch.equal(StoreReader(tmp_path).read(0, sum(map(len, data))), torch.cat(data))


def test_a_part_of_other_settings_is_refused(tmp_path):
    data = items(6)
    write_part(tmp_path, data, 0, 2)
    with pytest.raises(ValueError, match="another split"):
        write_part(tmp_path, data, 0, 3)


def test_store_files_get_the_default_mode_not_0600(tmp_path):
    previous = os.umask(0o022)
    try:
        write_part(tmp_path, items(5), 0, 1)
    finally:
        os.umask(previous)
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    files = [tmp_path / shard["file"] for shard in manifest["shards"]]
    files += [tmp_path / MANIFEST_FILE, part_manifest_path(tmp_path, 0, 1)]
    assert {stat.S_IMODE(path.stat().st_mode) for path in files} == {0o644}


def test_a_window_holding_everything_shuffles_like_the_in_memory_trainer(tmp_path):
    data = torch.cat(items(30))
    stream = ShuffledStream(TensorRows(data), 64, 3, len(data))
    epoch_rows = torch.cat([stream.batch(step) for step in range(len(data) // 64)])
    permutation = torch.randperm(len(data), generator=torch.Generator().manual_seed(3 * 1_000_003))
    assert torch.equal(epoch_rows, data[permutation[: len(epoch_rows)]])


def test_a_bounded_window_sees_every_row_once_per_epoch(tmp_path):
    data = torch.arange(1000, dtype=torch.float32)[:, None].expand(1000, D_MODEL).contiguous()
    stream = ShuffledStream(TensorRows(data), 50, 0, 160)
    assert stream.window_rows == 160 and stream.chunk_rows == 10
    first_epoch = torch.cat([stream.batch(step) for step in range(20)])[:, 0]
    assert sorted(first_epoch.tolist()) == list(range(1000))
    assert not torch.equal(first_epoch, torch.arange(1000.0))
    second_epoch = torch.cat([stream.batch(step) for step in range(20, 40)])[:, 0]
    assert not torch.equal(first_epoch, second_epoch)


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory, planted_rows):
    store = tmp_path_factory.mktemp("store")
    write_part(store, list(planted_rows.split(100)), 0, 1, shard_rows=500)
    return StoreReader(store)


@pytest.fixture(scope="module")
def planted_rows():
    return planted_activations()


def test_training_from_a_store_equals_training_on_the_tensor(planted_rows, planted_store):
    from_tensor, _ = train_matryoshka_sae(planted_rows, config(steps=40), progress=False)
    from_store, _ = train_matryoshka_sae(planted_store, config(steps=40), progress=False)
    for name, tensor in from_tensor.state_dict().items():
        assert torch.equal(tensor, from_store.state_dict()[name]), name


def test_a_bounded_buffer_resumes_mid_epoch_exactly(planted_store, tmp_path):
    """4000 rows, a window of about 1000 (64 kB of float32 rows), 128-row batches: the
    checkpoint at step 13 is inside the second window of the first epoch."""
    bounded = {"shuffle_buffer_gb": 1000 * D_MODEL * 4 / 1e9, "checkpoint_every": 13}
    straight, _ = train_matryoshka_sae(
        planted_store, config(steps=40, checkpoint_dir=tmp_path / "a", **bounded), progress=False
    )
    interrupted = config(steps=13, checkpoint_dir=tmp_path / "b", **bounded)
    train_matryoshka_sae(planted_store, interrupted, progress=False)
    saved = torch.load(tmp_path / "b" / CHECKPOINT_FILE, weights_only=True)
    position = saved["stream_position"]
    assert (position["epoch"], position["window"]) == (0, 1) and position["row"] > 0
    assert 990 <= saved["run"]["window_rows"] <= 1000
    resumed, report = train_matryoshka_sae(
        planted_store, dataclasses.replace(interrupted, steps=40), progress=False
    )
    assert report.resumed_from_step == 13
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    unbounded, _ = train_matryoshka_sae(planted_store, config(steps=40), progress=False)
    assert not torch.equal(unbounded.W_enc, straight.W_enc)  # the window changes the order
    with pytest.raises(ValueError, match="other settings"):
        train_matryoshka_sae(
            planted_store,
            dataclasses.replace(interrupted, steps=40, shuffle_buffer_gb=1.0),
            progress=False,
        )
