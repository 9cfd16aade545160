"""Embedded closed-loop benchmarks.

* :mod:`pi0_eqm.envs.metaworld` - Meta-World v3 env wrapper (openpi-style observations), scripted experts, demos.
* :mod:`pi0_eqm.envs.evaluate` - model-independent receding-horizon evaluation harness with JSON results.
* :mod:`pi0_eqm.envs.stats` - Wilson confidence intervals for success rates.

Submodules are not imported here: importing :mod:`pi0_eqm.envs.metaworld` sets ``MUJOCO_GL`` (default ``egl``),
which must happen before anything else imports mujoco.
"""
