"""Atomic publication gives what a plain ``open``/``mkdir`` would under the umask (another user can read a norm-stats
file, a run marker or a dataset), and a replaced file keeps its mode."""

import os

import pytest

from pi0_eqm.atomic import atomic_directory
from pi0_eqm.atomic import atomic_write_bytes
from pi0_eqm.atomic import umask


@pytest.fixture(params=[0o022, 0o002, 0o077])
def mask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_umask_reads_without_changing_it(mask):
    assert umask() == mask
    assert umask() == mask


def test_written_files_and_directories_follow_the_umask(tmp_path, mask):
    atomic_write_bytes(tmp_path / "norm_stats.json", b"{}")
    assert (tmp_path / "norm_stats.json").stat().st_mode & 0o777 == 0o666 & ~mask
    with atomic_directory(tmp_path / "dataset", overwrite=False) as tmp:
        (tmp / "data").mkdir()
    assert (tmp_path / "dataset").stat().st_mode & 0o777 == 0o777 & ~mask


def test_a_replaced_file_keeps_its_mode(tmp_path, mask):
    path = tmp_path / "marker.json"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o640
