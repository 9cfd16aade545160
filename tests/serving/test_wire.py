"""Codec round trips, exact openpi bytes, decoder hardening and schema validation (no network)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from pi0_eqm.robots import ALOHA
from pi0_eqm.robots import LIBERO
from pi0_eqm.serving import ArraySpec
from pi0_eqm.serving import ImageSpec
from pi0_eqm.serving import ObservationSchema
from pi0_eqm.serving import StringSpec
from pi0_eqm.serving import validate
from pi0_eqm.serving.wire import WireError
from pi0_eqm.serving.wire import WireLimits
from pi0_eqm.serving.wire import packb
from pi0_eqm.serving.wire import unpackb


def nd(data: bytes, dtype, shape) -> dict:
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}


def test_exact_bytes_match_openpi_compat_example():
    # openpi-client's msgpack_numpy encoding of {"observation/state": np.arange(2, dtype=np.float32)}
    expected = (
        b"\x81\xb1observation/state\x84"
        b"\xc4\x0b__ndarray__\xc3"
        b"\xc4\x04data\xc4\x08" + np.arange(2, dtype="<f4").tobytes() + b"\xc4\x05dtype\xa3<f4"
        b"\xc4\x05shape\x91\x02"
    )
    assert packb({"observation/state": np.arange(2, dtype=np.float32)}) == expected
    out = unpackb(expected)
    np.testing.assert_array_equal(out["observation/state"], np.arange(2, dtype=np.float32))


def test_npgeneric_bytes():
    assert packb(np.float32(1.5)) == b"\x83\xc4\x0d__npgeneric__\xc3\xc4\x04data\xcb?\xf8\x00\x00\x00\x00\x00\x00" + (
        b"\xc4\x05dtype\xa3<f4"
    )


@pytest.mark.parametrize(
    "value",
    [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        np.arange(6, dtype=np.float64),
        np.full((224, 224, 3), 7, np.uint8),
        np.array([True, False]),
        np.arange(-4, 4, dtype=np.int8),
        np.arange(5, dtype=np.uint16),
        np.arange(5, dtype=np.int64),
        np.array(["pick", "place"]),
        np.array([b"ab", b"c"]),
        np.zeros((0, 3), np.float32),
        np.array(3.5, np.float16),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    ],
    ids=lambda v: f"{v.dtype}{list(v.shape)}",
)
def test_array_round_trip(value):
    out = unpackb(packb({"x": value, "nested": {"y": [value]}}))
    for got in (out["x"], out["nested"]["y"][0]):
        assert got.dtype == value.dtype and got.shape == value.shape
        np.testing.assert_array_equal(got, value)
        assert got.flags.writeable and got.flags.c_contiguous
    out["x"][...] = 0  # writable copy: must not raise


def test_scalars_and_plain_values_round_trip():
    obj = {
        "f32": np.float32(1.25),
        "i64": np.int64(-3),
        "u8": np.uint8(200),
        "b": np.bool_(True),
        "plain": [1, 2.5, "x", b"raw", None, True, {"k": (1, 2)}],
    }
    out = unpackb(packb(obj))
    for k in ("f32", "i64", "u8", "b"):
        assert type(out[k]) is type(obj[k]) and out[k] == obj[k]
    # Subclasses of Python types (np.str_, np.float64) are packed natively by msgpack, exactly as in openpi.
    assert unpackb(packb([np.str_("hi"), np.float64(2.0)])) == ["hi", 2.0]
    assert out["plain"] == [1, 2.5, "x", b"raw", None, True, {"k": [1, 2]}]


def test_big_endian_input_becomes_native():
    arr = np.arange(4, dtype=">f4")
    out = unpackb(msgpack.packb({"x": nd(arr.tobytes(), ">f4", [4])}))
    assert out["x"].dtype.isnative and out["x"].dtype == np.float32
    np.testing.assert_array_equal(out["x"], np.arange(4))


def test_str_marker_keys_accepted():
    out = unpackb(msgpack.packb({"__ndarray__": True, "data": b"\x01\x02", "dtype": "|u1", "shape": [2]}))
    np.testing.assert_array_equal(out, [1, 2])


def test_pack_refuses_object_and_complex():
    for bad in (np.array([object()]), np.array([1j]), np.zeros(2, dtype="V4")):
        with pytest.raises(ValueError):
            packb(bad)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (msgpack.packb({"s": nd(b"\0" * 16, "|O", [2])}), "s: dtype '|O' is not allowed; expected one of bool"),
        (msgpack.packb({"s": nd(b"\0" * 8, "|V8", [1])}), "not allowed"),
        (msgpack.packb({"s": nd(b"\0" * 16, "<c16", [1])}), "not allowed"),
        (msgpack.packb({"s": nd(b"\0" * 8, "<M8", [1])}), "not allowed"),
        (msgpack.packb({"s": nd(b"\0" * 16, "<f16", [1])}), "at most 8 bytes"),
        (msgpack.packb({"s": nd(b"", "<U0", [0])}), "item size 0"),
        (msgpack.packb({"s": nd(b"", "f4,f4", [0])}), "not a valid dtype string"),
        (msgpack.packb({"s": nd(b"", "<q9", [0])}), "could not be parsed"),
        (msgpack.packb({"s": nd(b"", 4, [0])}), "dtype must be a string"),
        (msgpack.packb({"s": nd(b"\0" * 3, "<f4", [1])}), "needs 1 x 4 = 4 bytes"),
        (msgpack.packb({"s": nd(b"\0" * 5, "<f4", [1])}), "data has 5 bytes"),
        (msgpack.packb({"s": nd(b"", "<f4", [1 << 40, 1 << 40])}), "elements; expected at most"),
        (msgpack.packb({"s": nd(b"", "<f4", [-1])}), "negative"),
        (msgpack.packb({"s": nd(b"", "<f4", [1] * 9)}), "rank 9"),
        (msgpack.packb({"s": nd(b"", "<f4", "8")}), "shape must be a list"),
        (msgpack.packb({"s": nd(b"", "<f4", [True])}), "shape must be a list"),
        (msgpack.packb({"s": nd("x", "<f4", [])}), "data must be msgpack bin"),
        (msgpack.packb({"s": {**nd(b"", "<f4", [0]), b"extra": 1}}), "unexpected field 'extra'"),
        (msgpack.packb({"s": {b"__ndarray__": True, b"dtype": "<f4"}}), "missing field"),
        (msgpack.packb({"s": nd(b"\xff" * 4, "<U1", [1])}), "invalid code points"),
        (msgpack.packb({"g": {b"__npgeneric__": True, b"data": "x", b"dtype": "<f4"}}), "carries str"),
        (msgpack.packb({"g": {b"__npgeneric__": True, b"data": 300, b"dtype": "|u1"}}), "does not fit"),
        (msgpack.packb({"g": {b"__npgeneric__": True, b"data": 1, b"dtype": "|O"}}), "not allowed"),
        (msgpack.packb({"e": msgpack.ExtType(3, b"x")}), "extension type"),
        (msgpack.packb({"a": 1}) + b"\x00", "trailing bytes"),
        (msgpack.packb({"a": "x" * 100})[:20], "not valid msgpack"),
        (b"\xc1\xc1", "not valid msgpack"),
        (b"", "empty message"),
        (msgpack.packb({"d": [[[[[[[[[[1]]]]]]]]]]}), "nesting depth"),
        (msgpack.packb({1: 2}), "not valid msgpack"),
        (msgpack.packb({"big": b"\0" * 2048}), "exceeds the limit of 1024 bytes"),
    ],
)
def test_unpack_rejects(raw, needle):
    limits = WireLimits(max_message_bytes=1024, max_depth=8)
    with pytest.raises(WireError) as info:
        unpackb(raw, limits)
    assert needle in str(info.value), str(info.value)


def test_total_bytes_and_container_caps():
    limits = WireLimits(max_total_array_bytes=100, max_container_len=10)
    with pytest.raises(WireError, match="decoded arrays total"):
        unpackb(packb({"a": np.zeros(10), "b": np.zeros(10)}), limits)
    with pytest.raises(WireError, match="max_array_len"):
        unpackb(packb({"l": list(range(11))}), limits)
    with pytest.raises(WireError, match="text"):
        unpackb("not bytes")


def test_validate_reports_all_problems():
    obs = {
        "observation/image": np.zeros((256, 256, 3), np.uint8),
        "observation/state": np.array([np.nan, np.inf] + [0.0] * 5),
        "prompt": 42,
        "extra": 1,
    }
    with pytest.raises(WireError) as info:
        validate(obs, LIBERO.schema(allow_extra=False))
    problems = info.value.problems
    text = str(info.value)
    assert len(problems) == 5, text
    for needle in (
        "observation/image: image shape (256, 256, 3) is wrong; expected uint8 image of shape (224, 224, 3)",
        "observation/wrist_image: required key is missing",
        "observation/state: shape (7,) is wrong; expected (8,)",
        "prompt: expected a str",
        "extra: unexpected key",
        "5 problems",
    ):
        assert needle in text, text
    obs["observation/state"] = np.array([np.nan, np.inf] + [0.0] * 6)
    with pytest.raises(WireError, match="1 NaN and 1 inf"):
        validate(obs, LIBERO.schema())


def test_validate_defaults_nested_and_layouts():
    schema = ObservationSchema(
        {
            "state": ArraySpec((None, 2), kinds="fi", min_value=-1, max_value=1),
            "images": {"top": ImageSpec(4, 5, layouts=("HWC", "CHW"), allow_float=True)},
            "prompt": StringSpec(default="do something"),
        },
        allow_extra=False,
    )
    good = {"state": np.zeros((3, 2), np.int32), "images": {"top": np.zeros((3, 4, 5), np.float32)}}
    out = validate(good, schema)
    assert out["prompt"] == "do something" and "prompt" not in good
    out = validate({**good, "prompt": np.str_("x")}, schema)
    assert type(out["prompt"]) is str
    with pytest.raises(WireError, match="maximum 2 is above"):
        validate({**good, "state": np.full((1, 2), 2.0)}, schema)
    with pytest.raises(WireError, match=r"images/top: float image has values outside \[0, 1\]"):
        validate({**good, "images": {"top": np.full((4, 5, 3), 3.0)}}, schema)
    with pytest.raises(WireError, match="images/extra: unexpected key"):
        validate({**good, "images": {**good["images"], "extra": 1}}, schema)
    with pytest.raises(WireError, match="images: required map is missing"):
        validate({"state": good["state"]}, schema)


def test_aloha_schema_accepts_sim_request():
    obs = {"state": np.zeros(14), "images": {"cam_high": np.zeros((3, 224, 224), np.uint8)}}
    assert validate(obs, ALOHA.schema())["images"]["cam_high"].shape == (3, 224, 224)
    assert "fields" in ALOHA.schema().describe()
