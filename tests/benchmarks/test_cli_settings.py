"""Wrong decoder settings on the command line: a one-line error naming the value, exit code 2, no traceback."""

import subprocess
import sys

import pytest

from tests.benchmarks.conftest import REPO

BAD = [
    (["--step-size", "0"], "step_size (η) must be > 0"),
    (["--step-size", "-0.01"], "step_size (η) must be > 0"),
    (["--momentum", "1"], "momentum (μ) must be in [0, 1)"),
    (["--variant", "adam"], "adam"),
    (["--preset", "fast"], "fast"),
    (["--max-iters", "0"], "max_iters must be an int"),
]
SCRIPTS = {
    "scripts/eval.py": ["--config", "pi0_eqm_metaworld", "--checkpoint", "does-not-exist"],
    "scripts/serve_policy.py": ["--config", "pi0_eqm_metaworld", "--checkpoint", "does-not-exist"],
    "lab/scripts/load_test.py": ["--config", "debug_libero", "--random-init"],
}


# Every bad value through one script, and every script with one bad value: the values are checked by the shared
# DecoderSettings, each script's exit-2 path by its own run (8 runs instead of all 18 pairs).
CASES = [("scripts/serve_policy.py", flags, message) for flags, message in BAD] + [
    (script, *BAD[2]) for script in sorted(SCRIPTS) if script != "scripts/serve_policy.py"]


@pytest.mark.parametrize("script, flags, message", CASES)
def test_bad_solver_flags_exit_2_with_a_clear_message(script, flags, message):
    proc = subprocess.run([sys.executable, str(REPO / script), *SCRIPTS[script], *flags],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_decoder_study_rejects_unknown_arms():
    proc = subprocess.run([sys.executable, str(REPO / "lab" / "scripts" / "decoder_study.py"), "--arms", "eqm-7"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "unknown arms ['eqm-7']" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_has_no_executed_flag():
    """The evaluator executes --replan-every actions per chunk; an --executed flag it would overwrite is not offered."""
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "eval.py"), "--checkpoint", "x", "--executed", "3"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "--executed" in proc.stderr and "Traceback" not in proc.stderr
