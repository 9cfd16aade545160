"""The robots the policy can drive, one ``RobotSpec`` per file; add a robot with a new file and a line here."""

from pi0_eqm.robots.aloha import ALOHA
from pi0_eqm.robots.aloha import ALOHA_SIM
from pi0_eqm.robots.aloha import ROBOTWIN
from pi0_eqm.robots.libero import LIBERO
from pi0_eqm.robots.metaworld import METAWORLD
from pi0_eqm.robots.spec import RobotSpec

ROBOTS: dict[str, RobotSpec] = {spec.name: spec for spec in (LIBERO, METAWORLD, ALOHA, ALOHA_SIM, ROBOTWIN)}


def get_robot(name: str) -> RobotSpec:
    if name not in ROBOTS:
        raise ValueError(f"unknown robot {name!r}; registered robots: {sorted(ROBOTS)}")
    return ROBOTS[name]


__all__ = ["ALOHA", "ALOHA_SIM", "LIBERO", "METAWORLD", "ROBOTS", "ROBOTWIN", "RobotSpec", "get_robot"]
