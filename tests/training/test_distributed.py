import json
import os
from pathlib import Path
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from pi0_eqm.training import distributed as dist
from tests.training import _sharding_common as common

OURS = {"PI0_COORDINATOR_ADDRESS": "10.0.0.1:1234", "PI0_NUM_PROCESSES": "4", "PI0_PROCESS_ID": "2"}
SLURM = {
    "SLURM_JOB_ID": "4242",
    "SLURM_NTASKS": "4",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_STEP_NODELIST": "gpu[017-018,020]",
    "SLURM_JOB_NODELIST": "gpu[001-020]",
    "SLURM_STEP_NUM_NODES": "2",
}


# ---- environment parsing (pure) --------------------------------------------------------------------------------


def test_single_process_envs():
    assert dist.resolve_env({}) is None
    assert dist.resolve_env({"PI0_NUM_PROCESSES": "1", "PI0_PROCESS_ID": "0"}) is None
    assert dist.resolve_env({"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_JOB_ID": "7"}) is None
    assert dist.resolve_env({**SLURM, "PI0_DISTRIBUTED": "0"}) is None
    assert dist.resolve_env({**OURS, "PI0_DISTRIBUTED": "off"}) is None


def test_our_env():
    assert dist.resolve_env(OURS) == {
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 4,
        "process_id": 2,
        "local_device_ids": None,
        "source": "PI0_*",
    }
    assert dist.resolve_env({**OURS, "PI0_LOCAL_DEVICE_IDS": "0,1"})["local_device_ids"] == [0, 1]
    # ours win over SLURM's
    assert dist.resolve_env({**SLURM, **OURS})["process_id"] == 2


@pytest.mark.parametrize(
    "env, match",
    [
        ({"PI0_PROCESS_ID": "0"}, "PI0_PROCESS_ID is set but PI0_NUM_PROCESSES is not"),
        ({"PI0_NUM_PROCESSES": "2"}, "PI0_NUM_PROCESSES is set but PI0_PROCESS_ID is not"),
        ({"PI0_COORDINATOR_ADDRESS": "h:1"}, "PI0_COORDINATOR_ADDRESS is set but"),
        ({"PI0_NUM_PROCESSES": "2", "PI0_PROCESS_ID": "0"}, "needs PI0_COORDINATOR_ADDRESS"),
        ({**OURS, "PI0_PROCESS_ID": "4"}, "process id 4 is out of range for 4 processes"),
        ({**OURS, "PI0_NUM_PROCESSES": "0", "PI0_PROCESS_ID": "0"}, "must be >= 1"),
        ({**OURS, "PI0_NUM_PROCESSES": "two"}, "not an integer"),
        ({**OURS, "PI0_COORDINATOR_ADDRESS": "10.0.0.1"}, "host:port"),
        ({**OURS, "PI0_LOCAL_DEVICE_IDS": "a"}, "comma-separated"),
        ({"SLURM_NTASKS": "2"}, "only one of SLURM_NTASKS / SLURM_PROCID"),
        ({"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_JOB_ID": "1"}, "NODELIST"),
        ({"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "a"}, "PI0_COORDINATOR_PORT"),
    ],
)
def test_half_specified_envs_fail_clearly(env, match):
    with pytest.raises(dist.DistributedConfigError, match=match):
        dist.resolve_env(env)


def test_slurm_env():
    args = dist.resolve_env(SLURM)
    port = 4242 % 4096 + 65535 - 4096 + 1  # JAX's rule
    assert args == {
        "coordinator_address": f"gpu017:{port}",
        "num_processes": 4,
        "process_id": 3,
        "local_device_ids": [1],  # 4 tasks on 2 nodes: one accelerator per task
        "source": "SLURM",
    }
    # one task per node keeps all local devices (JAX's auto-detection would pin it to device 0)
    assert dist.resolve_env({**SLURM, "SLURM_STEP_NUM_NODES": "4"})["local_device_ids"] is None
    assert dist.resolve_env({**SLURM, "SLURM_NTASKS_PER_NODE": "1"})["local_device_ids"] is None
    assert dist.resolve_env({**SLURM, "PI0_LOCAL_DEVICE_IDS": "0,1"})["local_device_ids"] == [0, 1]
    # port and address overrides; job node list when there is no step
    assert dist.resolve_env({**SLURM, "PI0_COORDINATOR_PORT": "5555"})["coordinator_address"] == "gpu017:5555"
    assert dist.resolve_env({**SLURM, "PI0_COORDINATOR_ADDRESS": "x:1"})["coordinator_address"] == "x:1"
    no_step = {k: v for k, v in SLURM.items() if k != "SLURM_STEP_NODELIST"}
    assert dist.resolve_env(no_step)["coordinator_address"].startswith("gpu001:")


@pytest.mark.parametrize(
    "nodelist, first",
    [
        ("node001", "node001"),
        ("a,b", "a"),
        ("node[001-004],gpu5", "node001"),
        ("n[7,9-12]", "n7"),
        ("rack1-n[03-04]", "rack1-n03"),
    ],
)
def test_first_slurm_host(nodelist, first):
    assert dist.first_slurm_host(nodelist) == first


def test_initialize_from_env_single_process_is_a_noop():
    assert dist.initialize_from_env({}) == (0, 1)
    assert not jax.distributed.is_initialized()
    assert dist.per_host_shard() == (0, 1)
    assert dist.is_main_process()


def test_initialize_after_backend_use_fails_clearly():
    jax.devices()  # the backend is up in this process
    with pytest.raises(RuntimeError, match="before any JAX computation"):
        dist.initialize_from_env({**OURS, "PI0_COORDINATOR_ADDRESS": "127.0.0.1:1"})
    assert not jax.distributed.is_initialized()


_RECORD_INIT = """
import json, os
import jax
from pi0_eqm.training import distributed as dist
calls = []
jax.distributed.initialize = lambda **kw: calls.append(kw)
print(json.dumps({"cluster": dist.detect_cluster(), "result": dist.initialize_from_env(), "calls": calls}))
"""


@pytest.mark.parametrize(("extra", "cluster"), [
    ({}, None),
    ({"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911"}, "ompi"),  # mpirun
    ({"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911", "PI0_DISTRIBUTED": "0"}, "ompi"),
])
def test_without_our_variables_jax_cluster_detection_is_used(extra, cluster):
    """No PI0_* / SLURM variables: a cluster JAX recognises gets jax.distributed.initialize() with no arguments."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PI0_", "SLURM_", "OMPI_"))}
    out = subprocess.run([sys.executable, "-c", _RECORD_INIT], env={**env, **extra, "JAX_PLATFORMS": "cpu"},
                         capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["cluster"] == cluster
    expect_init = cluster is not None and extra.get("PI0_DISTRIBUTED") != "0"
    assert got["calls"] == ([{"initialization_timeout": 300}] if expect_init else [])
    assert got["result"] == [0, 1]


# ---- two processes on loopback ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_process_train_step_matches_single_process(tmp_path):
    """2 processes x 2 CPU devices, mesh 2x2 (data across processes, fsdp within): each process feeds its half of the
    global batch; the result equals the single-device step on the full batch."""
    port = free_port()
    procs = [
        common.start_worker(
            ["multi", str(tmp_path), "2"],
            common.worker_env(
                2,
                PI0_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                PI0_NUM_PROCESSES="2",
                PI0_PROCESS_ID=str(i),
                JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",  # loopback only
            ),
            tmp_path / f"multi_{i}.log",
        )
        for i in range(2)
    ]
    outputs = common.wait_workers([p for p in (*procs, common.start_reference(tmp_path)) if p is not None])
    ref = common.load_reference(tmp_path)
    for i, out in enumerate(outputs[:2]):  # (a third output is the reference run's, if it ran here)
        assert f"process {i}/2, 2 local / 4 global devices, cpu collectives gloo" in out, out[-3000:]
    run = dict(np.load(tmp_path / "multi_2p_2x2.npz"))
    common.assert_matches(run, ref, "2-process run")
    info = json.loads((tmp_path / "multi_2p_2x2.json").read_text())
    assert info["process_count"] == 2 and info["mesh"] == {"data": 2, "fsdp": 2}
    assert info["put_roundtrip_equal"] and info["out_specs_equal"]
    assert sum("fsdp" in v for v in info["specs"].values()) >= 10


# ---- the training loop: the same losses for 1 and 2 processes ----------------------------------------------------

_TRAIN = [sys.executable, "scripts/train.py", "debug_eqm", "--model.image-resolution", "16", "16",
          "--model.action-horizon=4", "--num-train-steps=6", "--save-interval=6", "--log-interval=1",
          "--fsdp-devices=2", "--fsdp-min-size-mbytes=0"]


def _losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_process_training_losses_equal_one_process(tmp_path):
    """scripts/train.py, 1 process x 2 devices vs 2 processes x 1 device (loopback, gloo), FSDP over 2 devices with
    the size threshold at 0 so the tiny model's params are really sharded: the global batches are the same, so the
    losses agree to float rounding."""
    repo = Path(__file__).resolve().parents[2]
    one = subprocess.run([*_TRAIN, "--exp-name=one", f"--checkpoint-base-dir={tmp_path}"], cwd=repo,
                         env=common.worker_env(2), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    port = free_port()
    procs = [subprocess.Popen([*_TRAIN, "--exp-name=two", f"--checkpoint-base-dir={tmp_path}"], cwd=repo,
                              env=common.worker_env(1, PI0_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                                    PI0_NUM_PROCESSES="2", PI0_PROCESS_ID=str(i),
                                                    JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    a, b = _losses(tmp_path / "debug_eqm" / "one"), _losses(tmp_path / "debug_eqm" / "two")
    assert len(a) == len(b) == 6
    print(f"1 vs 2 processes: max |loss difference| {np.max(np.abs(np.subtract(a, b))):.2e} over {len(a)} steps")
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("victim", [1, 0])  # 0 also hosts the coordination service
def test_a_dead_peer_ends_the_other_process_at_once_with_one_paragraph(tmp_path, victim):
    """kill -9 of one of 2 training processes: the other's next collective fails, and it ends at once with exit code
    2 and one paragraph naming the dead process. It used to print a traceback, wait ~90 s for the heartbeat timeout
    in jax.distributed's shutdown barrier and then abort with a C++ stack trace (exit -6)."""
    repo = Path(__file__).resolve().parents[2]
    port = free_port()
    cmd = [*_TRAIN, "--num-train-steps=1000", "--save-interval=500", "--exp-name=dead", f"--checkpoint-base-dir={tmp_path}"]
    procs = [subprocess.Popen(cmd, cwd=repo, env=common.worker_env(1, PI0_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                                                   PI0_NUM_PROCESSES="2", PI0_PROCESS_ID=str(i),
                                                                   JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        metrics, deadline = tmp_path / "debug_eqm" / "dead" / "metrics.jsonl", time.monotonic() + 300
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no training steps"
            time.sleep(0.2)
        procs[victim].kill()
        t0 = time.monotonic()
        survivor = procs[1 - victim]
        err = survivor.communicate(timeout=120)[1]
        took = time.monotonic() - t0
    finally:
        for p in procs:
            p.kill()
    assert survivor.returncode == 2 and took < 30, (survivor.returncode, took, err[-3000:])
    lines = err.strip().splitlines()
    assert lines[-1] == "(run with --debug for the traceback)", err[-3000:]
    assert lines[-2].startswith(f"error: process {1 - victim} of 2: a step's collective with the other processes "
                                f"failed") and f"process {victim} of 2 stopped" in lines[-2], err[-3000:]
    assert "Traceback" not in err and "Check failure" not in err, err[-3000:]
