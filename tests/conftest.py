import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# LeRobot frame indexes of the tests' generated datasets stay in the repo's .cache, not the user's.
os.environ.setdefault("PI0_FRAME_CACHE", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".cache",
                                                                      "lerobot_frames")))

# No persistent compilation cache in the test process: on this CPU backend, loading a cached train-step executable
# written earlier in the same run crashed the whole pytest process with a segfault inside
# jax/_src/compilation_cache.py (get_executable_and_time), on a clean clone too.
