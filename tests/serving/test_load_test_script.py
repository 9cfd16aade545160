"""lab/scripts/load_test.py end to end: real openpi clients, batching off and on, and a hostile client in the mix."""

import json
import subprocess
import sys

from tests.serving.conftest import REPO


def test_load_test_reports_every_run_and_the_hostile_client_harms_no_one(tmp_path, openpi_client_python):
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, str(REPO / "lab" / "scripts" / "load_test.py"), "--config", "debug_libero",
                           "--random-init", "--clients", "1", "3", "--requests", "15", "--max-batch", "4",
                           "--max-wait-ms", "20", "--out", str(out)], capture_output=True, text=True, timeout=900,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = json.loads(out.read_text())["runs"]
    assert [(r["clients"], r["batching"], r["hostile"]) for r in runs] == [
        (1, False, False), (3, False, False), (1, True, False), (3, True, False), (3, True, True)]
    for r in runs:
        assert r["errors"] == 0 and r["completed"] == r["clients"] * 15, r
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p90"] <= r["latency_ms"]["p99"]
    assert runs[0]["mean_batch"] == 1 and runs[3]["mean_batch"] > 1  # batching on groups the 3 clients
    hostile = runs[-1]["hostile_client"]
    assert hostile["sent"] > 0 and hostile["error_frames"] == hostile["sent"], hostile  # every attack refused
    assert "throughput 3 / 1 clients, batching on" in proc.stdout
