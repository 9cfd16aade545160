"""The server's memory stays flat over 1 000 requests with random decoder settings (one compiled decode per variant)."""

import jax
import numpy as np

from pi0_eqm.data.normalize import NormStats
from pi0_eqm.policies.policy import SERVING_CAPS
from pi0_eqm.policies.policy_config import policy_from_params
from pi0_eqm.robots import LIBERO
from pi0_eqm.serving.client import WebsocketClientPolicy
from pi0_eqm.serving.server import PolicyServer
from pi0_eqm.training.config import get_config

VARIANTS = ("nesterov", "eqm_nag", "gd", "bb")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def random_settings(rng: np.random.Generator) -> dict:
    return {"max_iters": int(rng.integers(1, 11)), "threshold": float(10 ** rng.uniform(-4, -1)),
            "step_size": float(10 ** rng.uniform(-2.5, -1)), "momentum": float(rng.uniform(0, 0.9)),
            "guard": bool(rng.integers(2)), "variant": VARIANTS[int(rng.integers(len(VARIANTS)))],
            "warm_start": ("off", "aligned", "paper_half")[int(rng.integers(3))], "executed": int(rng.integers(0, 60))}


def test_rss_is_flat_over_1000_requests_with_random_settings():
    cfg = get_config("debug_libero")
    stats = {"state": NormStats(np.zeros(8), np.ones(8)), "actions": NormStats(np.zeros(7), np.ones(7))}
    policy = policy_from_params(cfg, cfg.model.init(jax.random.key(0)), stats)
    policy.set_caps(SERVING_CAPS)
    rng = np.random.default_rng(0)
    obs = LIBERO.example(rng, prompt="open the drawer")
    with PolicyServer(policy, port=0, schema=LIBERO.schema()) as server:
        with WebsocketClientPolicy("127.0.0.1", server.port, connect_timeout=10) as client:
            rss = {}
            for i in range(1000):
                state = obs["observation/state"] + 0.001 * i
                out = client.infer({**obs, "observation/state": state, "decoder_settings": random_settings(rng)})
                assert np.all(np.isfinite(out["actions"]))
                if i in (199, 999):
                    rss[i] = rss_mb()
    print(f"RSS after 200 requests {rss[199]:.1f} MB, after 1000 {rss[999]:.1f} MB")
    assert sorted(policy._decode_cache) == sorted(((("variant", v),), False) for v in VARIANTS)
    assert all(fn._cache_size() == 1 for fn in policy._decode_cache.values())
    assert rss[999] - rss[199] < 25, rss  # a compile per new setting cost ~17 MB each
