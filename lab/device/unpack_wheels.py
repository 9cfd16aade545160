"""Unpacks every wheel in a directory into one directory for ``PYTHONPATH`` (the device image may have no pip; a
wheel is a zip archive laid out for site-packages). Standard library only.

    python lab/device/unpack_wheels.py lab/device/wheels /tmp/device-deps
"""

from __future__ import annotations

from pathlib import Path
import sys
import zipfile


def main(wheels: Path, target: Path) -> int:
    found = sorted(wheels.glob("*.whl"))
    if not found:
        print(f"error: no .whl files in {wheels}; run lab/device/download_wheels.sh first", file=sys.stderr)
        return 2
    target.mkdir(parents=True, exist_ok=True)
    for wheel in found:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(target)
        print(f"unpacked {wheel.name}")
    for so in target.rglob("*.so*"):  # zip archives do not keep the executable bit shared libraries need
        so.chmod(so.stat().st_mode | 0o111)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python lab/device/unpack_wheels.py WHEELS_DIR TARGET_DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
