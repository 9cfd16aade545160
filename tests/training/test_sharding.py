import json
import logging
import types

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from pi0_eqm.training import sharding as sh
from tests.training import _sharding_common as common


def abstract_mesh(data: int, fsdp: int) -> AbstractMesh:
    return AbstractMesh((data, fsdp), sh.BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def sds(*shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


# ---- the FSDP rule (openpi's fsdp_sharding), on abstract meshes --------------------------------------------------


def test_fsdp_rule():
    mesh = abstract_mesh(2, 4)
    tree = {
        "scalar": sds(),
        "vector": sds(4096),  # big but 1-D: replicated
        "small": sds(8, 8),  # < min size
        "wide": sds(512, 1024),  # largest axis divisible -> axis 1
        "tall": sds(1024, 6),
        "largest_not_divisible": sds(1026, 512),  # 1026 % 4 != 0 -> next largest axis
        "stacked": sds(2, 256, 1024),
        "none": None,
        "not_array": 3,
    }
    specs = jax.tree.map(lambda s: s.spec, sh.fsdp_sharding(tree, mesh, min_size_mbytes=0.01))
    assert specs == {
        "scalar": P(),
        "vector": P(),
        "small": P(),
        "wide": P(None, "fsdp"),
        "tall": P("fsdp", None),
        "largest_not_divisible": P(None, "fsdp"),
        "stacked": P(None, None, "fsdp"),
        "none": None,
        "not_array": P(),
    }


def test_fsdp_rule_threshold_dtype_and_ties():
    mesh = abstract_mesh(1, 4)
    # exactly 4 MiB is sharded (openpi replicates only strictly smaller arrays); half that in bf16 is not
    four_mib = sds(1024, 1024)
    assert sh.fsdp_sharding(four_mib, mesh).spec == P(None, "fsdp")
    assert sh.fsdp_sharding(sds(1024, 1024, dtype=jnp.bfloat16), mesh).spec == P()
    assert sh.fsdp_sharding(sds(1024, 1025), mesh).spec == P("fsdp", None)  # 1025 % 4 != 0
    # ties: openpi's argsort(shape)[::-1] prefers the later axis
    assert sh.fsdp_sharding(sds(1024, 1024), mesh, min_size_mbytes=0).spec == P(None, "fsdp")
    # works on concrete arrays too
    assert sh.fsdp_sharding(np.zeros((8, 16), np.float32), mesh, min_size_mbytes=0).spec == P(None, "fsdp")


def test_fsdp_rule_replicates_when_fsdp_is_1_or_nothing_divides(caplog):
    tree = {"w": sds(4096, 4096)}
    assert sh.fsdp_sharding(tree, abstract_mesh(8, 1))["w"].spec == P()
    with caplog.at_level(logging.WARNING, logger=sh.__name__):
        assert sh.fsdp_sharding({"odd": sds(1023, 2047)}, abstract_mesh(1, 4), min_size_mbytes=0)["odd"].spec == P()
    assert "no axis" in caplog.text and "['odd']" in caplog.text


def test_fsdp_rule_log(caplog):
    with caplog.at_level(logging.INFO, logger=sh.__name__):
        sh.fsdp_sharding({"w": sds(64, 32)}, abstract_mesh(1, 2), min_size_mbytes=0, log=True)
    assert "['w']" in caplog.text


def test_state_shardings_cover_train_state():
    import optax

    from pi0_eqm.training.train_step import init_train_state

    params = {"dense": {"kernel": jnp.zeros((64, 32)), "bias": jnp.zeros((32,))}}
    tx = optax.adamw(1e-3)
    abstract = jax.eval_shape(lambda: init_train_state(params, tx, jax.random.key(0), ema=True))
    shardings = sh.state_shardings(abstract, abstract_mesh(2, 2), min_size_mbytes=0)
    assert shardings.params["dense"]["kernel"].spec == P("fsdp", None)
    assert shardings.ema_params["dense"]["kernel"].spec == P("fsdp", None)
    mu = shardings.opt_state[0].mu["dense"]  # Adam moments follow the params
    assert mu["kernel"].spec == P("fsdp", None) and mu["bias"].spec == P()
    assert shardings.step.spec == P() and shardings.rng.spec == P()


# ---- meshes and batches on this process's single device -----------------------------------------------------------


def test_make_mesh_single_device():
    mesh = sh.make_mesh()
    assert mesh.axis_names == ("data", "fsdp")
    assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1}
    assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)
    explicit = sh.make_mesh(1, devices=jax.devices()[:1])
    assert explicit.axis_types == (AxisType.Auto, AxisType.Auto)
    assert sh.data_sharding(mesh).spec == P(("data", "fsdp"))
    assert sh.replicated(mesh).spec == P()


def test_make_mesh_errors():
    n = jax.device_count()
    with pytest.raises(ValueError, match="does not divide the device count"):
        sh.make_mesh(n + 1)
    with pytest.raises(ValueError, match="positive"):
        sh.make_mesh(0)
    with pytest.raises(ValueError, match="no devices"):
        sh.make_mesh(1, devices=[])


def test_batch_size_checks():
    mesh = abstract_mesh(2, 4)
    sh.check_global_batch_size(16, mesh)
    with pytest.raises(ValueError, match="global batch size 12 is not divisible by the data-parallel device count 8"):
        sh.check_global_batch_size(12, mesh)


def test_global_batch_from_local_single_process():
    mesh = sh.make_mesh()
    batch = {"x": np.arange(24, dtype=np.float32).reshape(8, 3), "m": np.ones(8, bool), "none": None}
    out = sh.global_batch_from_local(batch, mesh)
    assert out["none"] is None
    assert out["x"].shape == (8, 3) and out["x"].sharding.spec == P(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(out["x"]), batch["x"])
    assert sh.local_batch_size(8, mesh) == 8
    with pytest.raises(ValueError, match="same leading"):
        sh.global_batch_from_local({"a": np.zeros((8, 2)), "b": np.zeros((4, 2))}, mesh)
    with pytest.raises(ValueError, match="same leading"):
        sh.global_batch_from_local({"a": np.zeros((8, 2)), "s": np.float32(1.0)}, mesh)


def test_sharded_step_single_device_matches_plain_jit():
    """The wrapper (init_sharded, jit_train_step with donation, global batch) on a 1-device mesh = plain jit."""
    import optax

    from pi0_eqm.training.train_step import init_train_state
    from pi0_eqm.training.train_step import make_train_step

    class Linear:  # a decoder-shaped toy: loss(params, obs, actions, rng) -> ([B, H], no mask), no KI
        config = types.SimpleNamespace(ki=None)

        def loss(self, params, obs, actions, rng):
            pred = obs["x"] @ params["w"] + 0.0 * jax.random.normal(rng, ())
            return jnp.mean((pred[:, None, :] - actions) ** 2, axis=-1), None

    tx = optax.adam(1e-2)
    step_fn = make_train_step(Linear(), tx, ema_decay=0.5)

    def init_fn():
        return init_train_state({"w": jnp.ones((3, 2))}, tx, jax.random.key(0), ema=True)

    rng = np.random.default_rng(0)
    obs = {"x": rng.standard_normal((4, 3)).astype(np.float32)}
    actions = rng.standard_normal((4, 5, 2)).astype(np.float32)
    pad = np.zeros((4, 5), bool)

    ref_state, ref_m = jax.jit(step_fn)(jax.jit(init_fn)(), obs, actions, pad)
    mesh = sh.make_mesh()
    state = sh.init_sharded(init_fn, mesh)
    step = sh.jit_train_step(step_fn, mesh, sh.state_shardings(state, mesh))
    with jax.set_mesh(mesh):
        state, m = step(state, *sh.global_batch_from_local((obs, actions, pad), mesh))
    np.testing.assert_allclose(float(m["loss"]), float(ref_m["loss"]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(state.params["w"]), np.asarray(ref_state.params["w"]), rtol=1e-6)
    with jax.set_mesh(mesh):  # action_is_pad=None is allowed
        state, m = step(state, *sh.global_batch_from_local((obs, actions), mesh), None)
    assert np.isfinite(float(m["loss"]))
    host = sh.gather_to_host(state)
    assert isinstance(host.params["w"], np.ndarray) and int(host.step) == 2
    placed = sh.shard_train_state(host, mesh)
    np.testing.assert_array_equal(np.asarray(placed.ema_params["w"]), host.ema_params["w"])


# ---- the real thing: the tiny π₀-EqM on 8 simulated CPU devices (subprocess) --------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiny_pi0_eqm_sharded_step_matches_single_device(tmp_path):
    """Meshes 2x4 (data x fsdp) and 8x1 vs. plain single-device jit: 2 train steps of the tiny π₀-EqM."""
    # the two meshes and the reference each compile the train step once: run them side by side on the 2 cores
    procs = [
        common.start_worker(["mesh", str(tmp_path), str(f)], common.worker_env(8), tmp_path / f"mesh_{f}.log")
        for f in (4, 1)
    ]
    common.wait_workers([p for p in (*procs, common.start_reference(tmp_path)) if p is not None])
    ref = common.load_reference(tmp_path)
    for name, fsdp in (("mesh_2x4", 4), ("mesh_8x1", 1)):
        run = dict(np.load(tmp_path / f"{name}.npz"))
        errs = common.assert_matches(run, ref, name)
        assert errs["init"] == 0.0
        info = json.loads((tmp_path / f"{name}.json").read_text())
        assert info["device_count"] == 8 and info["mesh"] == {"data": 8 // fsdp, "fsdp": fsdp}
        assert info["placed_specs"] == info["specs"] and info["out_specs_equal"] and info["put_roundtrip_equal"]
        sharded = {k: v for k, v in info["specs"].items() if "fsdp" in v}
        if fsdp == 1:
            assert not sharded and info["opt_state_specs"] == [str(P())]
            continue
        # the big matrices really are split 4 ways along one axis; small / 1-D leaves are replicated
        assert len(sharded) >= 10, info["specs"]
        assert len(sharded) < len(info["specs"])
        for k in info["specs"]:
            full, shard = info["full_shapes"][k], info["shard_shapes"][k]
            if k in sharded:
                axis = [a for a, (f, s) in enumerate(zip(full, shard, strict=True)) if f != s]
                assert len(axis) == 1 and shard[axis[0]] * fsdp == full[axis[0]], (k, full, shard)
            else:
                assert shard == full, (k, full, shard)
        assert "['PaliGemma']['llm']['layers']['mlp']['gating_einsum']" in sharded
        assert any("fsdp" in s for s in info["opt_state_specs"])  # SGD momentum follows the params
