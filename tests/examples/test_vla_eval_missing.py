"""examples/vla_eval/pi0_eqm_server.py without its extra: one paragraph naming the extra, exit 2, no traceback."""

import subprocess
import sys
import textwrap

from tests.architecture import REPO

# A meta-path finder that makes vla_eval look uninstalled, then the script run as __main__ with --help.
CODE = textwrap.dedent("""
    import runpy, sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "vla_eval" or name.startswith("vla_eval."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Block())
    sys.argv = ["pi0_eqm_server.py", "--help"]
    runpy.run_path(sys.argv_script, run_name="__main__")
""").replace("sys.argv_script", repr(str(REPO / "examples" / "vla_eval" / "pi0_eqm_server.py")))


def test_help_without_the_extra_names_it():
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "uv sync --extra vla-eval" in proc.stderr
    assert "Traceback" not in proc.stderr
