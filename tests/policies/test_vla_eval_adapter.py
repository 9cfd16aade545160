"""examples/vla_eval/pi0_eqm_server.py under vla-eval's own model-server runner, driven over its websocket protocol
by three concurrent "shards": batched replies, one action per observation, and a reset on every EPISODE_START.

Needs ``vla-eval`` (``uv sync --extra vla-eval``, as CI does); skipped without it."""

import importlib.util
import socket
import sys
import threading
import time

import numpy as np
import pytest

from tests.policies.conftest import libero_obs
from tests.serving.conftest import REPO

if importlib.util.find_spec("vla_eval") is None:
    pytest.skip("vla-eval not installed (uv sync --extra vla-eval)", allow_module_level=True)

from vla_eval.model_servers.serve import serve  # noqa: E402
from vla_eval.protocol.messages import Message  # noqa: E402
from vla_eval.protocol.messages import MessageType  # noqa: E402
from vla_eval.protocol.messages import make_hello_payload  # noqa: E402
from vla_eval.protocol.messages import pack_message  # noqa: E402
from vla_eval.protocol.messages import unpack_message  # noqa: E402
from websockets.sync.client import connect  # noqa: E402


def adapter_class():
    spec = importlib.util.spec_from_file_location("pi0_eqm_vla_eval", REPO / "examples" / "vla_eval" / "pi0_eqm_server.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.Pi0EqmModelServer


def test_vla_eval_shards_get_batched_actions(trained_libero):
    cfg, step_dir = trained_libero
    server = adapter_class()(str(step_dir), cfg.name, chunk_size=2, max_batch_size=4, max_wait_time=0.05)
    # Compiled before the runner listens: batch sizes 1, 2 and 4, without and with a committed prefix.
    key = server.policy.compiled_key(server.policy.decoder.resolve(server.policy.settings))
    compiled = lambda: [server.policy.compiled_decode(key, p)._cache_size() for p in (False, True)]
    assert compiled() == [3, 3]
    batches = []
    infer_batch = server.policy.infer_batch
    server.policy.infer_batch = lambda items: batches.append(len(items)) or infer_batch(items)
    resets = []
    reset = server.policy.reset
    server.policy.reset = lambda s=None: resets.append(s) or reset(s)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    threading.Thread(target=serve, args=(server, "127.0.0.1", port), daemon=True).start()
    results, errors = {}, []

    def shard(i: int):
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    ws = connect(f"ws://127.0.0.1:{port}", max_size=None, open_timeout=5)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            seq = 0

            def call(kind, payload):
                nonlocal seq
                seq += 1
                ws.send(pack_message(Message(type=kind, payload=payload, seq=seq)))

            call(MessageType.HELLO, make_hello_payload())
            unpack_message(ws.recv(timeout=30))
            got = []
            for episode in range(2):
                call(MessageType.EPISODE_START, {"task": {"name": f"t{episode}"}})
                for step in range(4):
                    o = libero_obs(np.random.default_rng([i, episode, step]))
                    call(MessageType.OBSERVATION, {"images": {"agentview": o["observation/image"],
                                                              "wrist": o["observation/wrist_image"]},
                                                   "states": o["observation/state"], "task_description": o["prompt"]})
                    reply = unpack_message(ws.recv(timeout=60))
                    assert reply.type == MessageType.ACTION, reply.payload
                    got.append(np.asarray(reply.payload["actions"]))
                call(MessageType.EPISODE_END, {})
            ws.close()
            results[i] = got
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    assert sorted(results) == [0, 1, 2]
    for got in results.values():
        assert len(got) == 8 and all(a.shape == (7,) and np.all(np.isfinite(a)) for a in got)
    assert sum(batches) == 3 * 2 * 2 and max(batches) > 1  # a chunk every 2 steps; shards decoded together
    assert len(resets) == 3 * 2  # one reset per EPISODE_START
    assert compiled() == [3, 3]  # no shard's request compiled anything


def test_only_the_harness_says_when_an_episode_starts(trained_libero, monkeypatch):
    """A slow simulator (12 s between steps, over the 10 s gap rule) and a prompt change inside an episode do not
    start a new one; the harness's first observation of an episode does."""
    from types import SimpleNamespace

    cfg, step_dir = trained_libero
    server = adapter_class()(str(step_dir), cfg.name, chunk_size=2, warm_start="aligned", warm_up=False)
    replies = []
    infer_batch = server.policy.infer_batch
    server.policy.infer_batch = lambda items: replies.extend(infer_batch(items)) or replies[-len(items):]
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    o = libero_obs(np.random.default_rng(0))
    harness = {"images": {"agentview": o["observation/image"], "wrist": o["observation/wrist_image"]},
               "states": o["observation/state"], "task_description": o["prompt"]}
    for i, first in enumerate([True, False, False, True]):
        clock[0] += 12.0
        obs = {**harness, "task_description": f"{o['prompt']} {i}"}  # a changing prompt is not a signal either
        server.predict_batch([obs], [SimpleNamespace(is_first=first, session_id="shard-0")])
    assert [r["solver"]["new_episode"] for r in replies] == ["", "", "", ""]
    assert [r["solver"]["warm_started"] for r in replies] == [False, True, True, False]  # reset on EPISODE_START
