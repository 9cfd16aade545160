"""Training-time image augmentation with the parameters of openpi's ``preprocess_observation(train=True)``.

For every camera of a batch, in [0, 1] (the model's [-1, 1] images are mapped there and back), one random draw per
image:

* cameras whose key does not contain ``"wrist"``: a random crop of 95 % of the height and width (offset uniform over
  the image), resized back to the full size, and a rotation by an angle uniform in [-5°, 5°] about the centre. The
  three are composed into one coordinate map and sampled once, bilinearly, with zeros outside the image (as
  augmax's geometric chain does);
* every camera: augmax's ``ColorJitter(brightness=0.3, contrast=0.4, saturation=0.5)`` with its other defaults
  (``hue=0.2``, applied with probability 0.5), in HSV: brightness and contrast (augmax's formulas) act on the value
  channel, the hue is shifted by an amount uniform in ±0.2, the saturation is scaled by a log-uniform factor in
  [1/1.5, 1.5]. augmax shuffles the order of the four operations once per trace with numpy's global RNG; here the
  order is fixed (brightness, contrast, hue, saturation), so a run is reproducible.

:func:`augment_observation` is a pure function of the observation and a key. The train step calls it with a key
derived from the step's RNG, so a resumed run draws the same augmentations. Inference never calls it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from pi0_eqm.models.observation import Observation

CROP_FRACTION = 0.95
MAX_ROTATION_DEG = 5.0
BRIGHTNESS, CONTRAST, SATURATION, HUE, JITTER_PROBABILITY = 0.3, 0.4, 0.5, 0.2, 0.5


def _geometric(image: jax.Array, key: jax.Array) -> jax.Array:
    """Random 95 % crop, resize back and rotation of one ``[H, W, C]`` image in [0, 1]."""
    h, w = image.shape[:2]
    k_crop, k_rot = jax.random.split(key)
    ch, cw = int(h * CROP_FRACTION), int(w * CROP_FRACTION)
    limit = jnp.array([(h - ch) / 2, (w - cw) / 2])
    shift = jax.random.uniform(k_crop, (2,), minval=-limit, maxval=limit)
    theta = jax.random.uniform(k_rot, minval=-math.radians(MAX_ROTATION_DEG), maxval=math.radians(MAX_ROTATION_DEG))
    ys, xs = jnp.meshgrid(jnp.arange(h) - (h - 1) / 2, jnp.arange(w) - (w - 1) / 2, indexing="ij")
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    ry, rx = cos * ys + sin * xs, -sin * ys + cos * xs  # rotate about the centre
    sy, sx = ry * (ch / h) + shift[0] + (h - 1) / 2, rx * (cw / w) + shift[1] + (w - 1) / 2  # into the crop
    coords = jnp.stack([sy, sx])
    return jnp.stack([jax.scipy.ndimage.map_coordinates(image[..., c], coords, order=1, mode="constant", cval=0.0)
                      for c in range(image.shape[-1])], axis=-1)


def _rgb_to_hsv(rgb: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = jnp.max(rgb, axis=-1)
    delta = v - jnp.min(rgb, axis=-1)
    s = jnp.where(v > 0, delta / jnp.where(v > 0, v, 1.0), 0.0)
    safe = jnp.where(delta > 0, delta, 1.0)
    h = jnp.where(v == r, (g - b) / safe, jnp.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = jnp.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    return h, s, v


def _hsv_to_rgb(h: jax.Array, s: jax.Array, v: jax.Array) -> jax.Array:
    i = jnp.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.astype(jnp.int32) % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    channels = [jnp.select([i == k for k in range(6)], [c[ch] for c in choices]) for ch in range(3)]
    return jnp.stack(channels, axis=-1)


def _adjust_brightness(value: jax.Array, amount: jax.Array) -> jax.Array:
    return jnp.where(amount < 0.0, value * (1.0 + amount), value * (1.0 - amount) + amount)


def _adjust_contrast(value: jax.Array, amount: jax.Array) -> jax.Array:
    slant = jnp.tan((amount + 1.0) * (jnp.pi / 4))
    p1 = (slant - jnp.square(slant)) / (2 * (1 - jnp.square(slant)))
    p2 = 1 - p1
    return jnp.where(value < p1, value / slant,
                     jnp.where(value > p2, value / slant + 1 - 1 / slant, slant * (value - 0.5) + 0.5))


def _color_jitter(image: jax.Array, key: jax.Array) -> jax.Array:
    k_apply, k_b, k_c, k_h, k_s = jax.random.split(key, 5)
    h, s, v = _rgb_to_hsv(image)
    v = _adjust_brightness(v, jax.random.uniform(k_b, minval=-BRIGHTNESS, maxval=BRIGHTNESS))
    v = _adjust_contrast(v, jax.random.uniform(k_c, minval=-CONTRAST, maxval=CONTRAST))
    h = (h + jax.random.uniform(k_h, minval=-HUE, maxval=HUE)) % 1.0
    log_s = jax.random.uniform(k_s, minval=-math.log1p(SATURATION), maxval=math.log1p(SATURATION))
    s = jnp.clip(s * jnp.exp(log_s), 0.0, 1.0)
    return jnp.where(jax.random.bernoulli(k_apply, JITTER_PROBABILITY), _hsv_to_rgb(h, s, v), image)


def _augment_one(image: jax.Array, key: jax.Array, wrist: bool) -> jax.Array:
    k_geo, k_color = jax.random.split(key)
    if not wrist:
        image = _geometric(image, k_geo)
    return _color_jitter(image, k_color)


def augment_observation(obs: Observation, key: jax.Array) -> Observation:
    """``obs`` with every camera's images augmented (see the module docstring); one independent draw per image."""
    images = {}
    for i, (name, batch) in enumerate(sorted(obs.images.items())):
        keys = jax.random.split(jax.random.fold_in(key, i), batch.shape[0])
        unit = batch.astype(jnp.float32) / 2.0 + 0.5
        out = jax.vmap(lambda im, k, wrist="wrist" in name: _augment_one(im, k, wrist))(unit, keys)
        images[name] = (out * 2.0 - 1.0).astype(batch.dtype)
    return obs.replace(images=images)


_SALT = 0xA06  # separates the augmentation stream from the train step's noise stream of the same step


def with_augmentation(step_fn):
    """``step_fn(state, obs, actions, action_is_pad)`` with ``obs`` augmented first, keyed by
    ``fold_in(fold_in(state.rng, state.step), salt)``; jit the result as the plain step."""

    def step(state, obs, actions, action_is_pad=None):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step), _SALT)
        return step_fn(state, augment_observation(obs, key), actions, action_is_pad)

    return step
