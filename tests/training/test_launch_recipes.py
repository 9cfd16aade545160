"""The multi-node launch recipes in examples/cluster: their train commands parse, and the environment each launcher
sets resolves to the intended jax.distributed arguments."""

from pathlib import Path
import re
import shlex

import yaml

from pi0_eqm.training import distributed as dist
from pi0_eqm.training.config import cli

CLUSTER = Path(__file__).resolve().parents[2] / "examples" / "cluster"


def _train_args(command: list[str]) -> list[str]:
    return command[command.index("scripts/train.py") + 1:]


def _shell_train_command(path: Path) -> list[str]:
    text = path.read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if "scripts/train.py" in ln and not ln.lstrip().startswith("#"))
    return shlex.split(line.replace('"', "").strip())


def test_slurm_recipe():
    script = (CLUSTER / "slurm.sbatch").read_text()
    nodes = int(re.search(r"#SBATCH --nodes=(\d+)", script).group(1))
    per_node = int(re.search(r"#SBATCH --ntasks-per-node=(\d+)", script).group(1))
    args = [a.replace("${SLURM_JOB_ID}", "77") for a in _train_args(_shell_train_command(CLUSTER / "slurm.sbatch"))]
    cfg = cli(args)
    assert cfg.name == "pi0_eqm_libero_low_mem_finetune" and cfg.fsdp_devices == 8 and cfg.resume
    # what srun sets in the second task of the job
    env = {"SLURM_JOB_ID": "77", "SLURM_NTASKS": str(nodes * per_node), "SLURM_PROCID": "1", "SLURM_LOCALID": "0",
           "SLURM_STEP_NODELIST": "gpu[004-005]", "SLURM_STEP_NUM_NODES": str(nodes),
           "SLURM_NTASKS_PER_NODE": str(per_node), "PI0_COORDINATOR_PORT": "8476"}
    resolved = dist.resolve_env(env)
    assert resolved["coordinator_address"] == "gpu004:8476" and resolved["num_processes"] == 2
    assert resolved["local_device_ids"] is None  # one task per node keeps all 8 GPUs


def test_jobset_recipe():
    spec = yaml.safe_load((CLUSTER / "jobset.yaml").read_text())
    job = spec["spec"]["replicatedJobs"][0]
    pod = job["template"]["spec"]
    container = pod["template"]["spec"]["containers"][0]
    cfg = cli(_train_args(container["command"]))
    assert cfg.fsdp_devices == 8 and str(cfg.checkpoint_base_dir) == "/shared/checkpoints"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env["PI0_NUM_PROCESSES"]) == pod["parallelism"] == pod["completions"]
    # the coordinator is pod 0 of the job behind the JobSet's headless service
    host, port = env["PI0_COORDINATOR_ADDRESS"].split(":")
    assert host == f"{spec['metadata']['name']}-{job['name']}-0-0.{spec['metadata']['name']}"
    assert {"containerPort": int(port)} in container["ports"]
    env["PI0_PROCESS_ID"] = "1"  # the downward API's completion index
    assert dist.resolve_env(env)["process_id"] == 1


def test_tpu_pod_recipe():
    cmd = _shell_train_command(CLUSTER / "tpu_pod.sh")
    cfg = cli(_train_args(cmd))
    assert cfg.name == "pi0_eqm_libero" and cfg.fsdp_devices == 4
    assert "--worker=all" in (CLUSTER / "tpu_pod.sh").read_text()
    assert dist.resolve_env({}) is None  # no PI0_* / SLURM on a TPU VM: JAX's own detection takes over
