"""grain data loader: batches, determinism, exact resume, per-host shards, end-to-end from both formats."""

import json

import numpy as np
import pytest

from pi0_eqm.data.chunking import ChunkedDataset
from pi0_eqm.data.lerobot import LeRobotDataset
from pi0_eqm.data.loader import DataLoader
from pi0_eqm.data.loader import collate
from pi0_eqm.data.rlds import RldsDataset


class Frames:
    """A trivial index source: sample i = {"id": i, "x": [i, 2i], "prompt": "p{i}"}."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"id": np.int64(i), "x": np.array([i, 2 * i], np.float32), "prompt": f"p{i}"}


def ids(batches):
    return [b["id"].tolist() for b in batches]


def take(it, n):
    return [next(it) for _ in range(n)]


def test_batches_and_collate():
    loader = DataLoader(Frames(10), batch_size=4, shuffle=False, num_epochs=1, drop_remainder=False)
    batches = list(loader)
    assert ids(batches) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and len(loader) == 3
    b = batches[0]
    assert b["x"].shape == (4, 2) and b["x"].dtype == np.float32
    assert b["prompt"].dtype.kind == "U" and b["prompt"].tolist() == ["p0", "p1", "p2", "p3"]
    assert ids(DataLoader(Frames(10), batch_size=4, shuffle=False, num_epochs=1)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(TypeError, match="object array"):
        collate([{"a": np.array([1, None], dtype=object)}, {"a": np.array([2, None], dtype=object)}])
    with pytest.raises(ValueError, match="different shapes"):
        collate([{"a": np.zeros(2)}, {"a": np.zeros(3)}])


def test_shuffle_is_deterministic_and_reshuffles_each_epoch():
    make = lambda seed: DataLoader(Frames(12), batch_size=12, seed=seed)
    a, b, c = take(iter(make(7)), 3), take(iter(make(7)), 3), take(iter(make(8)), 1)
    assert ids(a) == ids(b)
    assert ids(a)[0] != ids(c)[0]
    for epoch in ids(a):
        assert sorted(epoch) == list(range(12))  # each epoch is a permutation
    assert ids(a)[0] != ids(a)[1]  # a different one each epoch


def test_exact_resume_through_json():
    loader = DataLoader(Frames(23), batch_size=4, seed=3, transform=lambda s: {**s, "x": s["x"] + 1})
    it = iter(loader)
    take(it, 5)  # crosses into the second epoch
    state = json.loads(json.dumps(it.get_state()))
    expected = take(it, 8)
    resumed = iter(DataLoader(Frames(23), batch_size=4, seed=3, transform=lambda s: {**s, "x": s["x"] + 1}))
    resumed.set_state(state)
    got = take(resumed, 8)
    for e, g in zip(expected, got, strict=True):
        assert e.keys() == g.keys()
        for k in e:
            np.testing.assert_array_equal(e[k], g[k])
    assert resumed.get_state() == it.get_state()


def test_random_transform_is_reproducible_on_resume():
    def jitter(sample, rng):
        return {**sample, "noise": rng.normal(size=2)}

    make = lambda: DataLoader(Frames(9), batch_size=3, seed=1, random_transform=jitter)
    it = iter(make())
    take(it, 2)
    state = it.get_state()
    expected = take(it, 3)
    again = iter(make())
    again.set_state(state)
    got = take(again, 3)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(e["noise"], g["noise"])
        np.testing.assert_array_equal(e["id"], g["id"])


def test_resume_rejects_changed_settings():
    it = iter(DataLoader(Frames(20), batch_size=4, seed=0))
    next(it)
    state = it.get_state()
    other = iter(DataLoader(Frames(20), batch_size=5, seed=1))
    with pytest.raises(ValueError, match=r"batch_size: saved 4 vs now 5, seed: saved 0 vs now 1"):
        other.set_state(state)
    with pytest.raises(ValueError, match="not a DataLoader state"):
        other.set_state({"next_index": 3})


@pytest.mark.parametrize("n", [24, 25])
def test_shards_are_disjoint_and_cover(n):
    count = 3
    shards = []
    for index in range(count):
        loader = DataLoader(Frames(n), batch_size=2, seed=5, num_epochs=1, shard_index=index, shard_count=count,
                            even_shards=False, drop_remainder=False)  # fmt: skip
        shards.append([i for b in loader for i in b["id"].tolist()])
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat)) == n  # disjoint and covering
    # Sharding cuts one global stream into blocks: the shards' k-th batches, concatenated, are the k-th global batch.
    single = [i for b in DataLoader(Frames(n), batch_size=1, seed=5, num_epochs=1) for i in b["id"].tolist()]
    assert sorted(single) == sorted(flat)
    assert shards[0] == [i for k in range(0, n, 2 * count) for i in single[k:k + 2]]
    even = [len(DataLoader(Frames(n), batch_size=1, num_epochs=1, shard_index=i, shard_count=count)) for i in range(count)]
    assert len(set(even)) == 1 and even[0] == n // count  # equal lengths so no host waits on another


def test_global_batches_do_not_depend_on_the_shard_count():
    """With a random transform too: the same samples, in the same order, with the same augmentation."""
    def noisy(sample, rng):
        return {**sample, "noise": rng.normal()}

    def global_batches(count, steps=7):
        iters = [iter(DataLoader(Frames(10), batch_size=12 // count, seed=4, shard_index=i, shard_count=count,
                                 random_transform=noisy)) for i in range(count)]
        return [{k: np.concatenate([next_b[k] for next_b in parts]) for k in ("id", "noise")}
                for parts in ([next(it) for it in iters] for _ in range(steps))]

    one = global_batches(1)
    for count in (2, 3, 4):
        for a, b in zip(one, global_batches(count), strict=True):
            np.testing.assert_array_equal(a["id"], b["id"])
            np.testing.assert_array_equal(a["noise"], b["noise"])


def test_infinite_shards_are_disjoint_per_epoch():
    streams = [take(iter(DataLoader(Frames(12), batch_size=3, seed=2, shard_index=i, shard_count=2)), 2) for i in range(2)]
    first_epoch = [i for s in streams for b in s for i in b["id"].tolist()]
    assert sorted(first_epoch) == list(range(12))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="shard_index < shard_count"):
        DataLoader(Frames(4), batch_size=1, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        DataLoader(Frames(4), batch_size=0)
    with pytest.raises(ValueError, match="fewer than batch_size=8"):
        DataLoader(Frames(4), batch_size=8, num_epochs=1)
    with pytest.raises(TypeError, match="has no length"):
        len(DataLoader(Frames(4), batch_size=1))


@pytest.mark.parametrize("kind", ["rlds", "lerobot", "lerobot_video"])
def test_end_to_end(kind, rlds_dir, lerobot_dir, lerobot_video_dir, episodes):
    source = {
        "rlds": lambda: RldsDataset(rlds_dir),
        "lerobot": lambda: LeRobotDataset(lerobot_dir),
        "lerobot_video": lambda: LeRobotDataset(lerobot_video_dir),
    }[kind]()
    make = lambda: DataLoader(ChunkedDataset(source, horizon=6), batch_size=8, seed=11)
    it = iter(make())
    batch = next(it)
    assert batch["observation/image"].shape == (8, 32, 32, 3) and batch["observation/image"].dtype == np.uint8
    assert batch["observation/wrist_image"].shape == (8, 32, 32, 3)
    assert batch["state"].shape == (8, 8) and batch["actions"].shape == (8, 6, 7) and batch["action_is_pad"].shape == (8, 6)
    assert batch["prompt"].shape == (8,)
    for j in range(8):
        ep, t = episodes[int(batch["episode_index"][j])], int(batch["frame_index"][j])
        np.testing.assert_array_equal(batch["state"][j], ep.steps["observation/state"][t])
        np.testing.assert_array_equal(batch["actions"][j, 0], ep.steps["action"][t])
        assert batch["prompt"][j] == ep.prompt
        if kind != "lerobot_video":
            np.testing.assert_array_equal(batch["observation/image"][j], ep.steps["observation/image"][t])
    state = it.get_state()
    expected = take(it, 3)
    resumed = iter(make())
    resumed.set_state(json.loads(json.dumps(state)))
    for e, g in zip(expected, take(resumed, 3), strict=True):
        for k in e:
            np.testing.assert_array_equal(e[k], g[k])
