"""The robots the policy can drive, one ``RobotSpec`` per file; add a robot with a new file and a line here."""

from pi0_eqm.robots.aloha import ALOHA
from pi0_eqm.robots.libero import LIBERO
from pi0_eqm.robots.metaworld import METAWORLD
from pi0_eqm.robots.spec import RobotSpec

ROBOTS: dict[str, RobotSpec] = {spec.name: spec for spec in (LIBERO, METAWORLD, ALOHA)}


def get_robot(name: str) -> RobotSpec:
    if name not in ROBOTS:
        raise ValueError(f"unknown robot {name!r}; registered robots: {sorted(ROBOTS)}")
    return ROBOTS[name]


__all__ = ["ALOHA", "LIBERO", "METAWORLD", "ROBOTS", "RobotSpec", "get_robot"]
