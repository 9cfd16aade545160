import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# LeRobot frame indexes of the tests' generated datasets stay in the repo's .cache, not the user's.
os.environ.setdefault("PI0_FRAME_CACHE", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".cache",
                                                                      "lerobot_frames")))

import jax  # noqa: E402

_CACHE = os.path.join(os.path.dirname(__file__), "..", ".cache", "jax")
jax.config.update("jax_compilation_cache_dir", os.path.abspath(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
