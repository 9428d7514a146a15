"""Replay: seeded buffers, balanced and reservoir policies, the replay share of each batch."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
import torch

from classp_hf.methods import Replay, TaskContext
from classp_hf.methods.replay import balanced_quotas, replay_count

from ..helpers.methods import BagOfWords, pad_collator, toy_dataset


def context(data, index, seed=0, batch_size=4):
    return TaskContext(index, f"t{index}", data, BagOfWords(), pad_collator, batch_size, seed, num_labels=3)


def task(index, n=20):
    """Task ``index``: examples whose first token is 100 * (index + 1) + their position."""
    data = toy_dataset(n, seed=index)
    ids = [[100 * (index + 1) + i] + row[1:] for i, row in enumerate(data["input_ids"])]
    return data.remove_columns("input_ids").add_column("input_ids", ids)


def owner(example):
    return example["input_ids"][0] // 100 - 1


def fill(method, tasks, seed=0):
    for index, data in enumerate(tasks):
        method.after_task(context(data, index, seed))


def test_replay_count_is_the_share_of_each_batch():
    assert [replay_count(8, r) for r in (0.5, 0.2, 0.25, 0.75)] == [8, 2, 3, 24]
    assert replay_count(3, 0.5) == 3  # a short last batch gets its own share


def test_balanced_split_is_rebalanced_when_a_task_is_added():
    assert balanced_quotas(10, 3) == [4, 3, 3]
    method = Replay(buffer_size=10)
    fill(method, [task(0)])
    assert Counter(owner(e) for e in method.buffer) == {0: 10}
    first = list(method.buffer)
    method.after_task(context(task(1), 1))
    assert Counter(owner(e) for e in method.buffer) == {0: 5, 1: 5}
    assert method.buffer[:5] == first[:5]  # task 0 keeps the first of its seeded sample
    method.after_task(context(task(2), 2))
    assert Counter(owner(e) for e in method.buffer) == {0: 4, 1: 3, 2: 3}
    assert method.buffer_tasks == [owner(e) for e in method.buffer]
    assert set(method.buffer[0]) == {"input_ids", "attention_mask", "labels"}


def test_buffer_is_deterministic_per_seed():
    tasks = [task(0), task(1)]
    one, two, other = Replay(buffer_size=7), Replay(buffer_size=7), Replay(buffer_size=7)
    fill(one, tasks)
    fill(two, tasks)
    fill(other, tasks, seed=1)
    assert one.buffer == two.buffer
    assert one.buffer != other.buffer


def test_reservoir_matches_sequential_reservoir_sampling():
    method = Replay(buffer_size=6, policy="reservoir")
    tasks = [task(0, 5), task(1, 20), task(2, 20)]
    fill(method, tasks, seed=3)
    # Literal reservoir sampling over the same seeded orders, one example at a time.
    buffer, seen = [], 0
    for index, data in enumerate(tasks):
        rng = np.random.default_rng([1, 3, index])  # replay's key: (fill tag, seed, task index)
        order = rng.permutation(len(data)).tolist()
        pending = []
        for position in order:
            seen += 1
            if len(buffer) < 6:
                buffer.append(data[position]["input_ids"][0])
            else:
                pending.append((position, seen))
        if pending:
            slots = rng.integers(0, np.array([s for _, s in pending]))
            for (position, _), slot in zip(pending, slots):
                if slot < 6:
                    buffer[slot] = data[position]["input_ids"][0]
    assert [e["input_ids"][0] for e in method.buffer] == buffer
    assert method.seen == 45 and len(set(buffer)) == 6
    assert {owner(e) for e in method.buffer} != {0}  # later tasks got in


def test_collator_adds_the_replay_share_and_no_draws_on_task_0():
    method = Replay(buffer_size=8, replay_ratio=0.2)
    method.before_task(context(task(0), 0))
    collate = method.collate(pad_collator)
    current = [task(1)[i] for i in range(8)]
    assert collate(current)["input_ids"].shape[0] == 8  # empty buffer: nothing drawn
    method.after_task(context(task(0), 0))
    method.before_task(context(task(1), 1))
    batch = collate(current)
    assert batch["input_ids"].shape[0] == 10
    assert torch.equal(batch["labels"][:8], torch.tensor([e["labels"] for e in current]))
    assert all(int(first) // 100 == 1 for first in batch["input_ids"][8:, 0])  # drawn from task 0
    assert collate(current[:3])["input_ids"].shape[0] == 4  # round(3 * 0.25)


def test_draws_are_seeded_by_seed_and_task_and_cycle_through_the_buffer():
    def draws(seed, index):
        method = Replay(buffer_size=6)
        fill(method, [task(0)])
        method.before_task(context(task(1), index, seed))
        return [e["input_ids"][0] for e in method.draw(12)]

    first = draws(0, 1)
    assert first == draws(0, 1)
    assert first != draws(0, 2) and first != draws(1, 1)
    assert sorted(first[:6]) == sorted(first[6:])  # each example once per pass


def test_columns_a_replayed_example_lacks_get_minus_one():
    method = Replay(buffer_size=4)
    fill(method, [task(0)])
    method.before_task(context(task(1), 1))
    current = [{**task(1)[i], "lwf_index": i} for i in range(2)]
    batch = method.collate(pad_collator)(current)
    assert batch["lwf_index"].tolist() == [0, 1, -1, -1]


def test_state_round_trip_continues_bit_for_bit():
    method = Replay(buffer_size=9, policy="reservoir")
    fill(method, [task(0), task(1)])
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = Replay(buffer_size=9, policy="reservoir")
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.buffer == method.buffer and restored.seen == method.seen
    for m in (method, restored):
        m.after_task(context(task(2), 2))
        m.before_task(context(task(3), 3))
    assert restored.buffer == method.buffer
    assert restored.draw(5) == method.draw(5)
    tokens = sum(len(e["input_ids"]) for e in method.buffer)
    assert method.state_bytes() == 8 * (2 * tokens + 2 * 9 + 9)  # ids + mask, their lengths, labels (int64)


def test_bad_buffer_size():
    with pytest.raises(ValueError, match=r"buffer_size: expected an integer >= 1, got 0"):
        Replay(buffer_size=0)


def test_dataloader_workers_draw_their_own_seeded_sequences(monkeypatch):
    def draws(worker):
        method = Replay(buffer_size=6)
        fill(method, [task(0)])
        method.before_task(context(task(1), 1))
        info = None if worker is None else type("WorkerInfo", (), {"id": worker})()
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)
        return [e["input_ids"][0] for e in method.draw(6)]

    assert draws(0) == draws(0)
    assert len({tuple(draws(None)), tuple(draws(0)), tuple(draws(1))}) == 3
