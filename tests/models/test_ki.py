"""Knowledge insulation: masks, stop-gradient, token layout and the FAST data transform."""

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pi0_eqm.decoders import make_decoder
from pi0_eqm.decoders.ki import ki_losses
from pi0_eqm.models.configs import model_config
from pi0_eqm.models.decoder_config import EqmConfig
from pi0_eqm.models.decoder_config import FlowConfig
from pi0_eqm.models.fast import FastTokenizer
from pi0_eqm.models.ki import FastTokenLayout
from pi0_eqm.models.ki import KIConfig
from pi0_eqm.models.ki import TokenizeFastActions
from pi0_eqm.models.pi0 import Pi0
from pi0_eqm.training.data_config import make_tokenizer

KI = KIConfig(max_fast_tokens=10, fast_vocab_size=128, skip_tokens=2)
F = KI.max_fast_tokens


PRESETS = ["pi0_tiny", "pi05_tiny"]


def _setup(decoder=None, stop_gradient=True, seed=0, preset="pi0_tiny"):
    ki = KIConfig(max_fast_tokens=F, fast_vocab_size=128, skip_tokens=2, stop_gradient=stop_gradient)
    cfg = model_config(preset, decoder or EqmConfig(), real_action_dim=4, ki=ki)
    dec = make_decoder(cfg)
    params = cfg.init(jax.random.key(seed))
    # A non-zero SigLIP head (zero-initialised, as in openpi) so image features reach the backbone.
    params["PaliGemma"]["img"]["head"]["kernel"] = 0.02 * jax.random.normal(
        jax.random.key(seed + 1), params["PaliGemma"]["img"]["head"]["kernel"].shape)
    if cfg.pi05:  # zero-initialised adaRMS gates would close every expert residual branch
        params = flax.traverse_util.unflatten_dict({
            k: 0.02 * jax.random.normal(jax.random.key(seed + 2), v.shape) if "Dense_0/kernel" in k else v
            for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}, sep="/")
    rng = np.random.default_rng(seed)
    obs = cfg.fake_obs(2)
    obs = obs.replace(
        images={k: jnp.asarray(rng.uniform(-1, 1, v.shape), jnp.float32) for k, v in obs.images.items()},
        state=jnp.asarray(rng.normal(size=obs.state.shape), jnp.float32),
        tokenized_prompt=jnp.asarray(rng.integers(3, 200, obs.tokenized_prompt.shape), jnp.int32),
    )
    layout = cfg.fast_layout
    toks, masks = zip(*[layout.sequence(rng.integers(0, 128, n), F)[:2] for n in (4, 8)], strict=True)
    obs = obs.replace(fast_tokens=jnp.asarray(np.stack(toks)), fast_mask=jnp.asarray(np.stack(masks)))
    actions = jnp.asarray(rng.normal(size=(2, cfg.action_horizon, cfg.action_dim)), jnp.float32)
    return cfg, dec, params, obs, actions


def _is_backbone(path) -> bool:
    """VLM params: SigLIP, the embedder, and every per-layer / final-norm param of expert 0 (no ``_1`` suffix)."""
    keys = [getattr(k, "key", str(k)) for k in path]
    if keys[0] != "PaliGemma":
        return False
    return keys[1] == "img" or not any(k.endswith("_1") for k in keys)


def _grad_maxabs(dec, params, obs, actions, part):
    def f(p):
        action_loss, _, ce, _, mask = ki_losses(dec, p, obs, actions, jax.random.key(3))
        return jnp.mean(action_loss) if part == "action" else jnp.sum(ce * mask) / jnp.sum(mask)

    maxabs = jax.jit(lambda p: jax.tree.map(lambda g: jnp.max(jnp.abs(g)), jax.grad(f)(p)))(params)
    flat = jax.tree_util.tree_flatten_with_path(maxabs)[0]
    return {path: float(g) for path, g in flat}


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("decoder", [EqmConfig(), FlowConfig()], ids=["eqm", "flow"])
def test_expert_gradients_do_not_reach_the_backbone(decoder, preset):
    _, dec, params, obs, actions = _setup(decoder, preset=preset)
    g = _grad_maxabs(dec, params, obs, actions, "action")
    backbone = {p: v for p, v in g.items() if _is_backbone(p)}
    expert = {p: v for p, v in g.items() if not _is_backbone(p)}
    assert len(backbone) > 20 and len(expert) > 10
    leaked = {jax.tree_util.keystr(p): v for p, v in backbone.items() if v != 0.0}
    assert not leaked, f"expert loss reached backbone params: {leaked}"
    assert sum(v > 0 for v in expert.values()) >= len(expert) - 1  # all but possibly a bias that cancels


@pytest.mark.parametrize("preset", PRESETS)
def test_without_stop_gradient_the_expert_trains_the_backbone(preset):
    """The ablation switch really matters: joint training (no insulation) sends expert gradients into the VLM."""
    _, dec, params, obs, actions = _setup(stop_gradient=False, preset=preset)
    g = _grad_maxabs(dec, params, obs, actions, "action")
    reached = [p for p, v in g.items() if _is_backbone(p) and v > 0]
    assert len(reached) > 10


@pytest.mark.parametrize("preset", PRESETS)
def test_fast_loss_trains_only_the_backbone(preset):
    _, dec, params, obs, actions = _setup(preset=preset)
    g = _grad_maxabs(dec, params, obs, actions, "fast")
    leaked = {jax.tree_util.keystr(p): v for p, v in g.items() if not _is_backbone(p) and v != 0.0}
    assert not leaked, f"FAST loss reached expert params: {leaked}"
    assert sum(v > 0 for p, v in g.items() if _is_backbone(p)) > 10


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_expert_ignores_fast_tokens_and_matches_inference_path(preset):
    cfg, dec, params, obs, actions = _setup(preset=preset)
    model = Pi0(cfg)
    x = actions
    t = jnp.full((2,), 0.3)

    def field(o):
        out, _ = model.apply({"params": params}, o, o.fast_tokens[:, :-1], o.fast_mask[:, :-1], x, t,
                             method=Pi0.ki_forward)
        return out

    base = field(obs)
    other = obs.replace(fast_tokens=jnp.asarray(np.random.default_rng(9).integers(300, 510, obs.fast_tokens.shape),
                                                jnp.int32), fast_mask=jnp.ones_like(obs.fast_mask))
    np.testing.assert_allclose(field(other), base, atol=1e-5)
    kv, prefix_mask = model.apply({"params": params}, obs, method=Pi0.prefill)
    inference = model.apply({"params": params}, kv, prefix_mask, obs.state, x, t, method=Pi0.expert_field)
    np.testing.assert_allclose(inference, base, atol=1e-4)


def test_fast_tokens_are_causal():
    cfg, _, params, obs, actions = _setup()
    model = Pi0(cfg)
    tokens, mask = obs.fast_tokens[:, :-1], jnp.ones_like(obs.fast_mask[:, :-1])
    _, logits = model.apply({"params": params}, obs, tokens, mask, actions, jnp.zeros((2,)), method=Pi0.ki_forward)
    changed = tokens.at[:, 5:].set(7)
    _, logits2 = model.apply({"params": params}, obs, changed, mask, actions, jnp.zeros((2,)), method=Pi0.ki_forward)
    np.testing.assert_allclose(logits2[:, :5], logits[:, :5], atol=1e-4)
    assert float(jnp.max(jnp.abs(logits2[:, 5:] - logits[:, 5:]))) > 1e-3
    assert logits.shape == (2, F - 1, cfg.vocab_size)


def test_layout_maps_fast_ids_into_the_vocab_tail():
    layout = FastTokenLayout.of(1040, KIConfig(fast_vocab_size=512, skip_tokens=16))
    assert layout.text_vocab_size == 512
    ids = np.arange(512)
    lm = layout.to_lm(ids)
    assert lm.min() == 512 and lm.max() == 1040 - 17
    np.testing.assert_array_equal(layout.from_lm(lm), ids)
    assert layout.from_lm([3, layout.begin_id, layout.end_id]).tolist() == [-1, -1, -1]
    tokens, mask, truncated = layout.sequence([1, 2, 3], 8)
    assert tokens[:5].tolist() == [layout.begin_id, *layout.to_lm([1, 2, 3]), layout.end_id]
    assert mask.tolist() == [True] * 5 + [False] * 3 and not truncated
    assert layout.sequence(np.arange(10), 8)[2]
    with pytest.raises(ValueError, match="FAST ids must be in"):
        layout.to_lm([512])
    with pytest.raises(ValueError, match="leaves no room for text"):
        FastTokenLayout.of(600, KIConfig(fast_vocab_size=1024))


def test_prompt_tokens_stay_below_the_fast_tail():
    cfg = model_config("pi0_metaworld", EqmConfig(), vocab_size=1040, ki=KIConfig(fast_vocab_size=512, skip_tokens=16))
    tok = make_tokenizer(cfg)
    words = "reach push pick place open close the drawer door window button press peg insert side".split()
    ids, mask = tok.tokenize(" ".join(words))
    assert ids[mask].max() < cfg.text_vocab_size == 512
    with pytest.raises(ValueError, match="ids are left for text"):
        make_tokenizer(model_config("pi0_tiny", EqmConfig(), vocab_size=512, ki=KIConfig(fast_vocab_size=400,
                                                                                        skip_tokens=2)))


def test_ki_config_validation():
    with pytest.raises(ValueError, match="skip_tokens"):
        KIConfig(skip_tokens=1)
    with pytest.raises(ValueError, match="max_fast_tokens"):
        KIConfig(max_fast_tokens=2)
    with pytest.raises(ValueError, match="loss_weight"):
        KIConfig(loss_weight=-1.0)


def _sine_chunks_and_tokenizer():
    """200 smooth 8 × 4 chunks (sines of random frequency and phase) and a FAST tokenizer fitted on them."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 8)[:, None]
    chunks = np.sin(2 * np.pi * (t * rng.uniform(0.5, 1.5, (200, 1, 4)) + rng.uniform(0, 1, (200, 1, 4))))
    return chunks, FastTokenizer.fit(chunks, scale=10.0, vocab_size=128)


def test_tokenize_fast_actions_transform():
    chunks, tok = _sine_chunks_and_tokenizer()
    layout = FastTokenLayout.of(512, KI)
    transform = TokenizeFastActions(tok, layout, 32)
    padded = np.concatenate([chunks[0], np.zeros((8, 28))], axis=-1)  # [H, 32]: only the first 4 dims are encoded
    out = transform({"actions": padded, "state": np.zeros(32)})
    n = int(out["fast_mask"].sum())
    assert out["fast_tokens"][0] == layout.begin_id and out["fast_tokens"][n - 1] == layout.end_id
    decoded = tok.decode(layout.from_lm(out["fast_tokens"][1:n - 1]).tolist())
    np.testing.assert_allclose(decoded, chunks[0], atol=0.2)
    no_actions = transform({"state": np.zeros(32)})
    assert "fast_tokens" not in no_actions
    short = TokenizeFastActions(tok, layout, 3)
    short({"actions": padded})
    assert short.truncated == 1
    with pytest.raises(ValueError, match="expects actions"):
        transform({"actions": np.zeros((8, 2))})


def test_fast_generate_is_greedy_and_self_consistent():
    from pi0_eqm.decoders.ki import fast_generate

    cfg, dec, params, obs, _ = _setup()
    layout = cfg.fast_layout
    tokens, mask = jax.jit(lambda p, o: fast_generate(dec, p, o))(params, obs)
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    assert tokens.shape == (2, F) and (tokens[:, 0] == layout.begin_id).all()
    for seq, m in zip(tokens, mask, strict=True):
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()  # contiguous
        body = seq[1:n]
        assert ((layout.from_lm(body) >= 0) | (body == layout.end_id)).all()
        assert (body[:-1] != layout.end_id).all()  # nothing after <end>
    # Teacher forcing the generated sequence reproduces every greedy choice.
    logits = Pi0(cfg).apply({"params": params}, obs, jnp.asarray(tokens), jnp.asarray(mask), method=Pi0.fast_logits)
    allowed = np.zeros(cfg.vocab_size, bool)
    allowed[layout.to_lm(np.arange(layout.fast_vocab_size))] = True
    allowed[layout.end_id] = True
    greedy = np.argmax(np.where(allowed, np.asarray(logits), -np.inf), axis=-1)
    for b in range(2):
        n = int(mask[b].sum())
        np.testing.assert_array_equal(greedy[b, : n - 1], tokens[b, 1:n])


def test_fast_actions_decodes_and_flags_invalid_sequences():
    from pi0_eqm.decoders.ki import fast_actions

    chunks, tok = _sine_chunks_and_tokenizer()
    layout = FastTokenLayout.of(512, KI)
    good, good_mask, _ = layout.sequence(tok.encode(chunks[0]), 40)
    unterminated, um, _ = layout.sequence(tok.encode(chunks[1]), 40)
    um[int(um.sum()) - 1] = False  # drop <end>
    actions, valid = fast_actions(tok, layout, np.stack([good, unterminated]), np.stack([good_mask, um]))
    assert actions.shape == (2, 8, 4) and valid.tolist() == [True, False]
    np.testing.assert_allclose(actions[0], tok.decode(tok.encode(chunks[0])), atol=1e-6)
