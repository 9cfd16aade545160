"""Embedded closed-loop benchmarks.

* :mod:`pi0_eqm.envs.metaworld` - Meta-World v3 env wrapper (openpi-style observations), scripted experts, demos.
* :mod:`pi0_eqm.envs.aloha_sim` / :mod:`pi0_eqm.envs.aloha_scripted` - the bimanual ALOHA sim and its scripted expert.
* :mod:`pi0_eqm.envs.evaluate` - model-independent receding-horizon evaluation harness with JSON results.
* :mod:`pi0_eqm.envs.stats` - Wilson confidence intervals for success rates.

Submodules are not imported here. Importing this package sets ``MUJOCO_GL`` (default ``egl``; fallback ``osmesa``)
for offscreen rendering, which must happen before anything imports mujoco; every simulator module is imported through
this package, so it precedes their mujoco and dm_control imports.
"""

import os
import sys

MUJOCO_PREIMPORTED_WITHOUT_GL = "mujoco" in sys.modules and "MUJOCO_GL" not in os.environ
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
