"""``--resume`` against the recorded data content: the same dataset resumes; another dataset written at the same
path with the same episodes, lengths and shapes (so the loader's own checks pass) is refused by its fingerprint."""

import dataclasses
import shutil

import pytest

from pi0_eqm.data.fingerprint import content_fingerprint
from pi0_eqm.training import loop
from pi0_eqm.training.config_record import read_config_and_data
from tests.policies.conftest import make_libero_dataset


def test_a_dataset_swapped_at_the_same_path_is_refused_at_resume(trained_libero, tmp_path):
    base, _ = trained_libero  # its norm stats and compiled train step; this run trains on its own copy of the data
    data = make_libero_dataset(tmp_path / "data")
    cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, path=str(data)), num_train_steps=1,
                              save_interval=1, checkpoint_base_dir=str(tmp_path / "ckpt"))
    loop.train(cfg, progress=False)
    _, recorded = read_config_and_data(cfg.checkpoint_dir / "1")
    assert recorded == content_fingerprint(data) and recorded.startswith("sha256:")
    resumed = dataclasses.replace(cfg, resume=True, num_train_steps=2)
    out = loop.train(resumed, progress=False)
    assert (out["start_step"], out["last_step"]) == (1, 2)  # the same data resumes

    shutil.rmtree(data)
    make_libero_dataset(data, seed=1)  # same episodes, steps and shapes; other pixels, states and actions
    with pytest.raises(ValueError, match=r"differs from the one step 2[\s\S]*the data's content") as err:
        loop.train(dataclasses.replace(resumed, num_train_steps=3), progress=False)
    assert "sha256:" in str(err.value) and "weight_loader=CheckpointWeightLoader" in str(err.value)


def test_the_fingerprint_reads_sizes_names_and_both_ends_of_each_file(tmp_path):
    root = tmp_path / "ds"
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text("{}")
    big = bytearray(100_000)
    (root / "data.bin").write_bytes(bytes(big))
    base = content_fingerprint(root)
    assert content_fingerprint(root) == base  # deterministic
    for edit in (0, len(big) - 1):  # a byte in the first or the last 16 KiB
        changed = bytearray(big)
        changed[edit] = 1
        (root / "data.bin").write_bytes(bytes(changed))
        assert content_fingerprint(root) != base
    changed = bytearray(big)
    changed[50_000] = 1  # the middle is not read: documented
    (root / "data.bin").write_bytes(bytes(changed))
    assert content_fingerprint(root) == base
    (root / "data.bin").write_bytes(bytes(big))
    (root / "meta" / "info.json").rename(root / "meta" / "other.json")
    assert content_fingerprint(root) != base
    (root / "meta" / "other.json").rename(root / "meta" / "info.json")
    (root / ".cache").mkdir()
    (root / ".cache" / "x").write_text("hidden files are skipped")
    assert content_fingerprint(root) == base
    with pytest.raises(FileNotFoundError, match="no dataset at"):
        content_fingerprint(tmp_path / "missing")
