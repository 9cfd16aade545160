"""Meta-World env, experts, demos and closed-loop evaluation through the real simulator (software rendering)."""

import json

import mujoco
import numpy as np
import pytest

from pi0_eqm.envs import metaworld as mw
from pi0_eqm.envs.evaluate import ExpertPolicy
from pi0_eqm.envs.evaluate import RandomPolicy
from pi0_eqm.envs.evaluate import evaluate
from pi0_eqm.envs.evaluate import scalar_stats

pytestmark = pytest.mark.sim

RES = 64


@pytest.fixture(scope="module")
def env():
    with mw.MetaWorldEnv("drawer-open-v3", seed=0, resolution=RES, max_steps=20) as e:
        yield e


def test_observation_spec(env):
    obs = env.reset(0)
    assert set(obs) == {mw.IMAGE_KEY, mw.WRIST_IMAGE_KEY, mw.STATE_KEY, mw.PROMPT_KEY}
    for key in (mw.IMAGE_KEY, mw.WRIST_IMAGE_KEY):
        img = obs[key]
        assert img.shape == (RES, RES, 3) and img.dtype == np.uint8 and img.flags.c_contiguous
        assert img.std() > 10 and len(np.unique(img.reshape(-1, 3), axis=0)) > 50, f"{key} looks blank"
    assert obs[mw.STATE_KEY].shape == (4,) and obs[mw.STATE_KEY].dtype == np.float32
    np.testing.assert_allclose(obs[mw.STATE_KEY], env.raw_obs[:4], rtol=1e-6)
    assert obs[mw.PROMPT_KEY] == "open the drawer" == mw.instruction("drawer-open-v3")

    obs2, success, done = env.step(np.array([0.0, 1.0, 0.0, 0.0]))
    assert isinstance(success, bool) and isinstance(done, bool) and not done
    assert obs2[mw.STATE_KEY][1] > obs[mw.STATE_KEY][1]  # +y action moves the hand in +y
    assert not np.array_equal(obs2[mw.IMAGE_KEY], obs[mw.IMAGE_KEY])
    none_obs, _, _ = env.step(np.zeros(4), render=False)
    assert none_obs is None and env.num_steps == 2


def test_episode_is_function_of_index_and_actions_are_clipped(env):
    def rollout(scale):
        env.reset(2)
        for _ in range(5):
            obs, _, _ = env.step(scale * np.array([1.0, -1.0, 1.0, 1.0]))
        return obs

    a, b = rollout(1.0), rollout(7.0)  # out-of-range actions are clipped to [-1, 1]
    env.reset(0)
    env.step(np.ones(4))
    c = rollout(1.0)  # history does not matter
    for key in (mw.IMAGE_KEY, mw.WRIST_IMAGE_KEY, mw.STATE_KEY):
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a[key], c[key])
    assert not np.array_equal(env.reset(3)[mw.IMAGE_KEY], env.reset(4)[mw.IMAGE_KEY])  # other configuration


def test_max_steps_and_errors(env):
    env.reset()
    done = False
    for _ in range(env.max_steps):
        assert not done
        _, _, done = env.step(np.zeros(4), render=False)
    assert done and not env.success and env.num_steps == env.max_steps
    with pytest.raises(RuntimeError, match="max_steps"):
        env.step(np.zeros(4))
    env.reset()
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0, 0, 0]))
    env.reset(0)
    assert mw.expert_episode(env) is None  # drawer-open needs ~88 expert steps > max_steps=20
    with pytest.raises(RuntimeError, match="freshly reset"):
        mw.expert_episode(env)
    env.reset()
    with pytest.raises(KeyError, match="privileged_obs=True"):
        ExpertPolicy().infer(env.observation())
    with pytest.raises(ValueError, match="unknown Meta-World"):
        mw.MetaWorldEnv("drawer-opne-v3")
    with pytest.raises(ValueError, match="max_steps"):
        mw.MetaWorldEnv("drawer-open-v3", max_steps=501)


def test_cameras_upright(env):
    """Known property of an upright view: geoms higher in the world appear higher in the image (and, for the
    downward-looking wrist camera, geoms farther from the robot appear higher). Checked on the segmentation render
    through the same code path (and 180-degree rotation) as the RGB images."""
    env.reset(0)

    def corr(camera, axis):
        env._renderer.enable_segmentation_rendering()
        try:
            seg = env.render_camera(camera)
        finally:
            env._renderer.disable_segmentation_rendering()
        geom, objtype = seg[..., 0], seg[..., 1]
        mask = (geom >= 0) & (objtype == mujoco.mjtObj.mjOBJ_GEOM)
        rows = np.nonzero(mask)[0]
        return np.corrcoef(rows, env._env.unwrapped.data.geom_xpos[geom[mask], axis])[0, 1]

    assert corr("corner", axis=2) < -0.5  # measured -0.73 (would be +0.73 without the rotation)
    assert corr("gripperPOV", axis=1) < -0.15  # measured -0.46


def _check_demo(demo, task):
    steps = demo["steps"]
    t = len(steps["action"])
    assert 10 < t < 200
    assert steps[mw.IMAGE_KEY].shape == (t, RES, RES, 3) and steps[mw.IMAGE_KEY].dtype == np.uint8
    assert steps[mw.WRIST_IMAGE_KEY].shape == (t, RES, RES, 3) and steps[mw.WRIST_IMAGE_KEY].dtype == np.uint8
    assert steps[mw.STATE_KEY].shape == (t, 4) and steps[mw.STATE_KEY].dtype == np.float32
    assert steps["action"].shape == (t, 4) and steps["action"].dtype == np.float32
    assert np.abs(steps["action"]).max() <= 1.0
    assert demo["task"] == task and demo["prompt"] == mw.instruction(task)
    assert demo["metadata"]["success_step"] == t


@pytest.mark.slow
def test_expert_demos_for_default_tasks():
    demos = list(mw.generate_demos(mw.DEFAULT_TASKS, episodes_per_task=1, seed=0, resolution=RES, progress=False))
    assert [d["task"] for d in demos] == list(mw.DEFAULT_TASKS)
    for demo in demos:
        _check_demo(demo, demo["task"])


def test_demos_deterministic_given_seed():
    def gen(seed, n=2, **kw):
        return list(mw.generate_demos(["handle-press-v3"], n, seed=seed, resolution=RES, progress=False, **kw))

    a, b, c = gen(3), gen(3), gen(4, n=1)
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        for key in x["steps"]:
            np.testing.assert_array_equal(x["steps"][key], y["steps"][key])
    assert not np.array_equal(a[0]["steps"][mw.STATE_KEY][0], c[0]["steps"][mw.STATE_KEY][0])  # new configuration
    # post-success padding keeps recording the expert
    padded = gen(3, n=1, extra_steps=5)[0]
    assert len(padded["steps"]["action"]) == len(a[0]["steps"]["action"]) + 5
    np.testing.assert_array_equal(
        padded["steps"][mw.STATE_KEY][: len(a[0]["steps"]["action"])], a[0]["steps"][mw.STATE_KEY]
    )


class _ExpertWithStats(ExpertPolicy):
    """The scripted expert, also reporting solver-like scalar stats the harness must collect."""

    def infer(self, obs):
        out = super().infer(obs)
        return {**out, "iterations": np.int32(3), "policy_timing": {"infer_ms": 1.5}, "note": "ignored"}


def test_evaluate_expert_policy_succeeds(tmp_path):
    tasks = ["handle-press-v3", "coffee-button-v3", "plate-slide-v3"]
    records = []
    res = evaluate(
        _ExpertWithStats(horizon=8), tasks, episodes_per_task=2, seed=1000, max_steps=120, replan_every=4,
        resolution=RES, privileged_obs=True, videos_per_task=1, video_dir=tmp_path, on_episode=records.append,
        progress=False,
    )  # fmt: skip
    json.dumps(res, allow_nan=False)  # strict-JSON serializable
    assert res["mean_success"] >= 0.8, res["per_task"]
    assert len(res["episodes"]) == len(records) == 6 and set(res["per_task"]) == set(tasks)
    ep = res["episodes"][0]
    assert ep["num_chunks"] == -(-ep["steps"] // 4) and len(ep["latency_s"]) == ep["num_chunks"]
    assert ep["stats_mean"] == {"iterations": 3.0, "policy_timing/infer_ms": 1.5}
    summary = res["per_task"]["handle-press-v3"]
    assert summary["n"] == 2 and summary["ci95"][0] <= summary["success_rate"] <= summary["ci95"][1]
    assert res["overall"]["n"] == 6 and res["config"]["seed"] == 1000 and "mujoco" in res["versions"]
    videos = sorted(tmp_path.iterdir())
    assert len(videos) == 3 and all(v.stat().st_size > 1000 for v in videos)
    assert res["episodes"][0]["video"] == str(videos[1]) and res["episodes"][1]["video"] is None


def test_evaluate_random_policy_fails():
    res = evaluate(
        RandomPolicy(horizon=10, seed=0), ["drawer-open-v3", "door-open-v3"], episodes_per_task=2, max_steps=60,
        replan_every=10, resolution=RES, progress=False,
    )  # fmt: skip
    assert res["mean_success"] <= 0.25
    assert all(ep["steps"] == 60 for ep in res["episodes"] if not ep["success"])


def test_evaluate_rejects_bad_policies():
    class BadShape:
        def infer(self, obs):
            return {"actions": np.zeros((5, 7))}

    with pytest.raises(ValueError, match=r"shape \[H>=1, 4\]"):
        evaluate(BadShape(), ["handle-press-v3"], episodes_per_task=1, progress=False)
    with pytest.raises(TypeError, match="infer"):
        evaluate(object(), ["handle-press-v3"], progress=False)


def test_scalar_stats():
    got = scalar_stats(
        {"actions": np.zeros((2, 4)), "a": 1, "b": np.float32(2.5), "c": np.array([True]), "d": np.zeros(3),
         "e": "text", "f": {"g": np.array(4.0), "h": [1, 2]}}
    )  # fmt: skip
    assert got == {"a": 1.0, "b": 2.5, "c": 1.0, "f/g": 4.0}
