"""The embedded benchmark's task set and instructions (no simulator import, so configs can use them cheaply)."""

from __future__ import annotations

from collections.abc import Sequence
import hashlib

# Fixed instruction per task. Each listed task's scripted expert solved 20/20 episodes in <= 126 steps (measured).
INSTRUCTIONS: dict[str, str] = {
    "button-press-topdown-v3": "press the button down from the top",
    "button-press-v3": "push the button",
    "button-press-wall-v3": "push the button behind the wall",
    "coffee-button-v3": "press the button on the coffee machine",
    "dial-turn-v3": "turn the dial",
    "door-close-v3": "close the door",
    "door-open-v3": "open the door",
    "drawer-close-v3": "close the drawer",
    "drawer-open-v3": "open the drawer",
    "faucet-close-v3": "turn the faucet handle to close it",
    "faucet-open-v3": "turn the faucet handle to open it",
    "handle-press-v3": "press the handle down",
    "lever-pull-v3": "pull the lever up",
    "plate-slide-v3": "slide the plate into the goal",
    "plate-slide-side-v3": "slide the plate sideways into the goal",
    "window-close-v3": "slide the window closed",
    "window-open-v3": "slide the window open",
}

# Default multi-task set: goal implied by the scene, expert 20/20, 33-88 steps to success, random policy ~0/10.
DEFAULT_TASKS: tuple[str, ...] = (
    "button-press-topdown-v3",
    "coffee-button-v3",
    "door-open-v3",
    "drawer-open-v3",
    "faucet-open-v3",
    "handle-press-v3",
    "plate-slide-v3",
    "window-open-v3",
)


def dataset_name(tasks: Sequence[str], episodes_per_task: int, seed: int, resolution: int) -> str:
    """A demo-dataset name that changes whenever its content would (tasks, count, seed, resolution)."""
    digest = hashlib.sha1(",".join(tasks).encode()).hexdigest()[:8]
    return f"metaworld_{len(tasks)}t_{episodes_per_task}ep_s{seed}_r{resolution}_{digest}"
