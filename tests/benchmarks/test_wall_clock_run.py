"""The wall-clock run, reduced: the shared EqM checkpoint served by ``scripts/serve_policy.py`` in its own process,
Meta-World stepped at 50 Hz here, ``AsyncChunkBroker`` between them, naive and prefix on one episode; measured delays,
round trips and discontinuities are reported."""

import json

import pytest

from tests.benchmarks.conftest import load_script

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def test_wall_clock_run_through_the_real_server(tmp_path, metaworld_home):
    mod = load_script("wall_clock_run")
    args = mod.Args(checkpoints=("eqm",), methods=("naive", "prefix"), episodes_per_task=1, max_steps=40,
                    tasks=metaworld_home.args()["tasks"][:1], checkpoint_base_dir=str(metaworld_home.ckpt),
                    exp_name="seed1_t8", port=8799, out=str(tmp_path / "out"), progress=False)
    rows = mod.main(args)
    assert set(rows) == {"eqm-naive", "eqm-prefix"}
    for row in rows.values():
        assert row["n"] == 1 and row["broker_errors"] == 0
        assert row["delay_max"] is not None and row["delay_max"] >= 0  # measured, per chunk after the first
        assert row["round_trip_ms_p50"] > 0 and row["jump_mean"] is not None
    saved = json.loads((tmp_path / "out" / "wall_clock.json").read_text())
    assert saved["episodes"]["eqm-prefix"][0]["delays"][0] == 0  # an episode's first chunk is awaited
    assert "`eqm-prefix`" in (tmp_path / "out" / "wall_clock.md").read_text()
    with pytest.raises(ValueError, match="unknown checkpoints"):
        mod.main(mod.Args(checkpoints=("nope",), out=str(tmp_path / "bad")))
