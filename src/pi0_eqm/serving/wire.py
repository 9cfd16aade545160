"""The openpi msgpack-numpy wire dialect, with a hardened decoder.

Encoding (byte-compatible with ``openpi_client.msgpack_numpy``): plain msgpack, ``use_bin_type=True``, no ext types::

    np.ndarray -> {b"__ndarray__": True, b"data": <C-order raw bytes>, b"dtype": arr.dtype.str, b"shape": [..]}
    np.generic -> {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}

The marker keys are msgpack *bin* (Python ``bytes``); ordinary dict keys are msgpack *str*. Python scalars, str,
bytes, lists/tuples and dicts pass through natively (tuples come back as lists).

Decoding (``unpackb``) trusts nothing. openpi's decoder builds ``np.ndarray(buffer=..., dtype=<peer string>)``, so a
peer sending ``dtype="|O"`` makes the server dereference attacker bytes as object pointers (segfault). Here:

* only dtype kinds ``b``, ``i``, ``u``, ``f`` (itemsize <= 8) and ``U``/``S`` (strings) are accepted; object, void,
  complex, datetime and unparsable dtype strings are rejected;
* ``len(data)`` must equal ``prod(shape) * itemsize``; shapes must be lists of non-negative ints with bounded rank;
* message size, per-array element count, total decoded array bytes, container lengths, string lengths and nesting
  depth are capped (``WireLimits``); ext types, trailing bytes and non-msgpack input are rejected;
* ``U`` arrays must hold valid code points.

Decoded arrays are **writable, C-contiguous, native-byte-order copies** (never views into the message buffer), so
callers may modify them in place and the message buffer can be freed.

Every violation raises ``WireError`` (a ``ValueError``) naming the offending path and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import msgpack
import numpy as np

from pi0_eqm.errors import InvalidRequestError

__all__ = ["WireError", "WireLimits", "packb", "unpackb", "ALLOWED_KINDS", "KIND_NAMES"]

# dtype kind -> human name used in error messages.
KIND_NAMES = {"b": "bool", "i": "int", "u": "uint", "f": "float", "U": "str", "S": "bytes"}
ALLOWED_KINDS = frozenset(KIND_NAMES)
_EXPECTED_KINDS = "one of bool, int, uint, float, str"
_NDARRAY_KEYS = frozenset({"__ndarray__", "data", "dtype", "shape"})
_NPGENERIC_KEYS = frozenset({"__npgeneric__", "data", "dtype"})
# What ``dtype.str`` looks like for the allowed kinds: byte order, one type char, item size.
_DTYPE_RE = re.compile(r"^[<>|=]?[a-zA-Z][0-9]{0,6}$")
_MAX_UNICODE = 0x10FFFF


class WireError(InvalidRequestError):
    """A message violated the wire format, the limits or the observation schema.

    ``problems`` lists every individual problem (one entry for codec errors, possibly several for schema errors).
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems else [message]


@dataclasses.dataclass(frozen=True)
class WireLimits:
    """Caps applied by ``unpackb``. Defaults fit openpi requests (a LIBERO request is ~301 KB) with wide margin."""

    max_message_bytes: int = 16 * 1024 * 1024  # size of one packed message
    max_array_elements: int = 1 << 24  # per array (a 1920x1080x3 image is 6.2M)
    max_total_array_bytes: int = 64 * 1024 * 1024  # sum of decoded array bytes in one message
    max_depth: int = 16  # nesting of maps/lists (the top-level map is depth 1)
    max_rank: int = 8  # ndarray ndim
    max_container_len: int = 10_000  # items in one msgpack map or array (checked inside msgpack, before allocation)
    max_str_bytes: int = 1 << 20  # one msgpack str (e.g. a prompt)
    max_items: int = 20_000  # msgpack values in the whole message (a LIBERO request has about 20)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if int(getattr(self, f.name)) < 1:
                raise ValueError(f"WireLimits.{f.name} must be >= 1")


DEFAULT_LIMITS = WireLimits()


# --------------------------------------------------------------------------------------------------- encoding
def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic) and obj.dtype.kind in ("V", "O", "c"):
        raise ValueError(f"Unsupported dtype for the wire: {obj.dtype} (kinds V, O, c cannot be sent)")
    if isinstance(obj, np.ndarray):
        return {
            b"__ndarray__": True,
            b"data": np.ascontiguousarray(obj).tobytes(),
            b"dtype": obj.dtype.str,
            b"shape": list(obj.shape),
        }
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"Cannot serialize object of type {type(obj).__name__}")


def packb(obj: Any) -> bytes:
    """Pack ``obj`` exactly as ``openpi_client.msgpack_numpy.packb`` does."""
    return msgpack.packb(obj, default=_pack_default, use_bin_type=True)


# --------------------------------------------------------------------------------------------------- decoding
def _fmt_path(path: str) -> str:
    return path or "message"


def _join(path: str, key: Any) -> str:
    k = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
    return f"{path}/{k}" if path else k


def _ext_hook(code: int, data: bytes) -> Any:
    raise WireError(f"message: msgpack extension type {code} is not allowed; expected plain msgpack")


def parse_dtype(spec: Any, path: str) -> np.dtype:
    """Parse and whitelist a peer-supplied dtype string (``arr.dtype.str`` form, e.g. ``"<f4"``)."""
    where = _fmt_path(path)
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if not isinstance(spec, str):
        raise WireError(f"{where}: dtype must be a string like '<f4', got {type(spec).__name__}")
    shown = spec if len(spec) <= 32 else spec[:32] + "..."
    if not _DTYPE_RE.match(spec):
        raise WireError(f"{where}: dtype {shown!r} is not a valid dtype string; expected e.g. '<f4', '|u1', '<U8'")
    try:
        dt = np.dtype(spec)
    except (TypeError, ValueError) as e:
        raise WireError(f"{where}: dtype {shown!r} could not be parsed ({e}); expected e.g. '<f4', '|u1'") from None
    if dt.kind not in ALLOWED_KINDS:
        raise WireError(f"{where}: dtype {shown!r} is not allowed; expected {_EXPECTED_KINDS}")
    if dt.itemsize == 0:
        raise WireError(f"{where}: dtype {shown!r} has item size 0; expected a sized dtype such as '<U8'")
    if dt.kind in "biuf" and dt.itemsize > 8:
        raise WireError(f"{where}: dtype {shown!r} ({dt.itemsize}-byte) is not allowed; expected at most 8 bytes")
    return dt


class _Decoder:
    def __init__(self, limits: WireLimits):
        self.limits = limits
        self.total_bytes = 0
        self.items = 0

    def walk(self, obj: Any, path: str, depth: int) -> Any:
        self.items += 1
        if self.items > self.limits.max_items:
            raise WireError(f"{_fmt_path(path)}: the message holds more than {self.limits.max_items} values; "
                            "expected an observation dict of arrays and a few scalars")
        if isinstance(obj, dict):
            self._check_depth(path, depth)
            marker = self._marker(obj)
            if marker == "__ndarray__":
                return self._ndarray(obj, path)
            if marker == "__npgeneric__":
                return self._npgeneric(obj, path)
            return {k: self.walk(v, _join(path, k), depth + 1) for k, v in obj.items()}
        if isinstance(obj, list):
            self._check_depth(path, depth)
            return [self.walk(v, f"{_fmt_path(path)}[{i}]", depth + 1) for i, v in enumerate(obj)]
        if obj is None or isinstance(obj, bool | int | float | str | bytes):
            return obj
        raise WireError(f"{_fmt_path(path)}: value of type {type(obj).__name__} is not allowed in a message")

    def _check_depth(self, path: str, depth: int) -> None:
        if depth > self.limits.max_depth:
            raise WireError(
                f"{_fmt_path(path)}: nesting depth {depth} exceeds the limit of {self.limits.max_depth}; "
                "expected a flat or shallowly nested observation dict"
            )

    @staticmethod
    def _marker(obj: dict) -> str | None:
        # Marker keys are bytes in openpi's dialect; str markers (other encoders) are accepted too.
        for name in ("__ndarray__", "__npgeneric__"):
            if obj.get(name.encode()) is True or obj.get(name) is True:
                return name
        return None

    @staticmethod
    def _fields(obj: dict, expected: frozenset, path: str, what: str) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for k, v in obj.items():
            name = k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)
            if name not in expected or name in fields:
                raise WireError(f"{_fmt_path(path)}: unexpected field {name!r} in {what}; expected {sorted(expected)}")
            fields[name] = v
        missing = expected - fields.keys()
        if missing:
            raise WireError(f"{_fmt_path(path)}: {what} is missing field(s) {sorted(missing)}")
        return fields

    def _ndarray(self, obj: dict, path: str) -> np.ndarray:
        lim, where = self.limits, _fmt_path(path)
        f = self._fields(obj, _NDARRAY_KEYS, path, "encoded ndarray")
        dt = parse_dtype(f["dtype"], path)
        shape = f["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise WireError(f"{where}: shape must be a list of ints, got {shape!r:.80}")
        if len(shape) > lim.max_rank:
            raise WireError(f"{where}: shape {shape} has rank {len(shape)}; expected rank <= {lim.max_rank}")
        if any(d < 0 for d in shape):
            raise WireError(f"{where}: shape {shape} has a negative dimension; expected non-negative dimensions")
        n = math.prod(shape)
        if n > lim.max_array_elements or any(d > lim.max_array_elements for d in shape):
            raise WireError(
                f"{where}: shape {shape} has {n} elements; expected at most {lim.max_array_elements} per array "
                "and per dimension"
            )
        data = f["data"]
        if not isinstance(data, bytes):
            raise WireError(f"{where}: data must be msgpack bin (bytes), got {type(data).__name__}")
        want = n * dt.itemsize
        if len(data) != want:
            raise WireError(
                f"{where}: data has {len(data)} bytes but shape {shape} with dtype {dt.str!r} needs "
                f"{n} x {dt.itemsize} = {want} bytes"
            )
        self.total_bytes += want
        if self.total_bytes > lim.max_total_array_bytes:
            raise WireError(
                f"{where}: decoded arrays total {self.total_bytes} bytes; expected at most "
                f"{lim.max_total_array_bytes} bytes per message"
            )
        arr = np.frombuffer(data, dtype=dt, count=n).reshape(shape)
        if dt.kind == "U" and n:
            codes = arr.reshape(-1).view(np.dtype(np.uint32).newbyteorder(dt.byteorder))
            if int(codes.max()) > _MAX_UNICODE:
                raise WireError(f"{where}: str array holds invalid code points; expected valid UTF-32 text")
        native = dt.newbyteorder("=") if dt.byteorder not in ("=", "|") else dt
        return np.array(arr, dtype=native, order="C", copy=True)

    def _npgeneric(self, obj: dict, path: str) -> np.generic:
        where = _fmt_path(path)
        f = self._fields(obj, _NPGENERIC_KEYS, path, "encoded numpy scalar")
        dt = parse_dtype(f["dtype"], path)
        data = f["data"]
        ok_types = {
            "b": (bool,),
            "i": (int,),
            "u": (int,),
            "f": (int, float),
            "U": (str,),
            "S": (bytes,),
        }[dt.kind]
        if not isinstance(data, ok_types) or (dt.kind in "iuf" and isinstance(data, bool)):
            raise WireError(
                f"{where}: numpy scalar of dtype {dt.str!r} carries {type(data).__name__}; "
                f"expected {' or '.join(t.__name__ for t in ok_types)}"
            )
        if dt.kind in "US" and len(data) > self.limits.max_str_bytes:
            raise WireError(f"{where}: numpy string scalar too long; expected at most {self.limits.max_str_bytes}")
        try:
            return dt.type(data)
        except (OverflowError, ValueError, TypeError) as e:
            raise WireError(f"{where}: value {data!r:.40} does not fit dtype {dt.str!r} ({e})") from None


def unpackb(data: bytes | bytearray | memoryview, limits: WireLimits | None = None) -> Any:
    """Decode one message of the openpi dialect, enforcing ``limits``; raises ``WireError`` on any violation."""
    lim = limits or DEFAULT_LIMITS
    if isinstance(data, str):
        raise WireError("message: got a text (str) message; expected binary msgpack")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError(f"message: got {type(data).__name__}; expected bytes")
    size = len(data)
    if size > lim.max_message_bytes:
        raise WireError(f"message: {size} bytes exceeds the limit of {lim.max_message_bytes} bytes")
    if size == 0:
        raise WireError("message: empty message; expected msgpack bytes")
    try:
        raw = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_ext_hook,
            max_str_len=lim.max_str_bytes,
            max_bin_len=lim.max_message_bytes,
            max_array_len=lim.max_container_len,
            max_map_len=lim.max_container_len,
        )
    except WireError:
        raise
    except msgpack.ExtraData:
        raise WireError("message: trailing bytes after the msgpack object; expected exactly one object") from None
    except (msgpack.OutOfData, msgpack.FormatError) as e:
        detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise WireError(f"message: not valid msgpack ({detail}); expected msgpack bytes") from None
    except msgpack.StackError:
        raise WireError(f"message: nesting too deep; expected depth <= {lim.max_depth}") from None
    except UnicodeDecodeError:
        raise WireError("message: a msgpack str is not valid UTF-8; expected UTF-8 strings") from None
    except (ValueError, TypeError) as e:  # length caps, invalid map keys, incomplete input, ...
        if "exceeds max_" in str(e):
            raise WireError(f"message: a msgpack string or container is too long ({e})") from None
        raise WireError(f"message: not valid msgpack for this protocol ({e}); expected an openpi msgpack map") from None
    return _Decoder(lim).walk(raw, "", 1)
