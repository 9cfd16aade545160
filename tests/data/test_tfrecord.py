"""TF-free TFRecord framing: CRC32C, writer, random-access reader, corruption detection."""

import struct

import numpy as np
import pytest

from pi0_eqm.data.tfrecord import TFRecordCorruptionError
from pi0_eqm.data.tfrecord import TFRecordFile
from pi0_eqm.data.tfrecord import _crc_loop
from pi0_eqm.data.tfrecord import crc32c
from pi0_eqm.data.tfrecord import masked_crc32c
from pi0_eqm.data.tfrecord import write_tfrecord


def test_crc32c_known_vectors():
    # RFC 3720 (iSCSI) appendix B.4 test vectors and the standard check value.
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E


@pytest.mark.parametrize("n", [4095, 4096, 4097, 10_000, 65_536, 123_457])
def test_vectorized_crc_matches_table_loop(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    assert crc32c(data) == _crc_loop(0xFFFFFFFF, data) ^ 0xFFFFFFFF


def test_masked_crc_of_length_header():
    # The masked CRC of an 8-byte little-endian length 0, as TensorFlow writes it for an empty record.
    crc = crc32c(struct.pack("<Q", 0))
    assert masked_crc32c(struct.pack("<Q", 0)) == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_write_and_read_records(tmp_path):
    rng = np.random.default_rng(0)
    payloads = [b"", b"x", rng.bytes(5000), rng.bytes(70_000), b"last"]
    path = tmp_path / "data.tfrecord"
    assert write_tfrecord(path, payloads) == 5
    raw = path.read_bytes()
    # Framing: length, masked crc of length, payload, masked crc of payload.
    (length,) = struct.unpack("<Q", raw[:8])
    assert length == 0 and struct.unpack("<I", raw[8:12])[0] == masked_crc32c(raw[:8])
    assert len(raw) == sum(16 + len(p) for p in payloads)
    f = TFRecordFile(path)
    assert len(f) == 5
    assert [f[i] for i in (3, 0, 4, 2, 1)] == [payloads[i] for i in (3, 0, 4, 2, 1)]
    assert list(f) == payloads
    with pytest.raises(IndexError, match="has 5 records"):
        f[5]


def test_corruption_is_detected(tmp_path):
    path = tmp_path / "data.tfrecord"
    write_tfrecord(path, [b"a" * 100, b"b" * 100])
    raw = bytearray(path.read_bytes())
    raw[12 + 50] ^= 0x01  # flip a payload bit of record 0
    path.write_bytes(bytes(raw))
    f = TFRecordFile(path)
    with pytest.raises(TFRecordCorruptionError, match="payload CRC mismatch in record 0"):
        f[0]
    assert f[1] == b"b" * 100
    assert TFRecordFile(path, verify_checksums=False)[0] != b"a" * 100

    path.write_bytes(bytes(raw[:-10]))  # truncated
    with pytest.raises(TFRecordCorruptionError, match="truncated"):
        len(TFRecordFile(path))

    path.write_bytes(b"this is not a tfrecord file at all")
    with pytest.raises(TFRecordCorruptionError, match="length CRC mismatch"):
        len(TFRecordFile(path))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="TFRecord file not found"):
        TFRecordFile(tmp_path / "nope.tfrecord")
