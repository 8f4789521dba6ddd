"""conch's autotuner: buckets, the fixed interpreter config, choosing the fastest, the on-disk cache."""

import json

import numpy as np
import pytest

from conch.kernels import autotune

CONFIGS = [{"BLOCK": 64, "num_warps": 4}, {"BLOCK": 128, "num_warps": 4}, {"BLOCK": 256, "num_warps": 8}]
COST = {64: 3.0, 128: 1.0, 256: 2.0}  # fake milliseconds per config


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCH_CACHE_DIR", str(tmp_path))
    # the GPU check runs the suite with CONCH_AUTOTUNE=off: these tests set the budget they test themselves
    monkeypatch.delenv("CONCH_AUTOTUNE", raising=False)
    autotune.clear_cache()
    yield tmp_path
    autotune.clear_cache()


def _fake(calls):
    """A bench that records its configs, and a timer that reports each config's fake cost."""
    current = {}

    def bench(cfg):
        calls.append(cfg["BLOCK"])
        current["cfg"] = cfg

    def timer(fn):
        fn()
        return COST[current["cfg"]["BLOCK"]]

    return bench, timer


def test_bucket():
    assert [autotune.bucket(n) for n in (0, 1, 2, 3, 4, 5, 63, 64, 65, 1000, 1025)] == [
        1, 1, 2, 4, 4, 8, 64, 64, 128, 1024, 2048,
    ]  # fmt: skip


def test_cache_path_follows_env(cache_dir):
    assert autotune.cache_path() == str(cache_dir / "autotune.json")


def test_interpreter_returns_fixed_config_without_timing(cache_dir, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls = []
    fixed = {"BLOCK": 32, "num_warps": 4}

    def bench(cfg):
        calls.append(cfg)

    assert autotune.pick("k", ("float32", 64), CONFIGS, bench, interpret_config=fixed) == fixed
    assert autotune.pick("k", ("float32", 64), CONFIGS, bench, like=np.zeros(3)) == CONFIGS[0]
    assert calls == []
    assert not (cache_dir / "autotune.json").exists()


def test_fake_timer_picks_fastest_and_caches(cache_dir):
    calls = []
    bench, timer = _fake(calls)
    best = autotune.pick("k", ("float32", 128), CONFIGS, bench, timer=timer)
    assert best == CONFIGS[1]
    assert set(calls) == {64, 128, 256}
    n = len(calls)
    assert n == 3 * (autotune.WARMUP + autotune.REPEATS)
    # memory hit: no timing the second time
    assert autotune.pick("k", ("float32", 128), CONFIGS, bench, timer=timer) == CONFIGS[1]
    assert len(calls) == n
    # another key is timed again
    autotune.pick("k", ("float16", 128), CONFIGS, bench, timer=timer)
    assert len(calls) == 2 * n


def test_disk_round_trip(cache_dir):
    calls = []
    bench, timer = _fake(calls)
    autotune.pick("matmul", ("bfloat16", 64, 64, 64), CONFIGS, bench, timer=timer)
    data = json.loads((cache_dir / "autotune.json").read_text())
    assert data["version"] == 1
    (key, cfg), *_ = data["entries"].items()
    assert json.loads(key)[0] == "matmul" and json.loads(key)[1] == "cpu" and cfg == CONFIGS[1]
    assert not [p for p in cache_dir.iterdir() if p.name != "autotune.json"]  # temp file replaced, not left

    autotune.clear_cache()  # a new process: memory empty, disk kept

    def exploding(cfg):
        raise AssertionError("must come from the disk cache")

    assert autotune.pick("matmul", ("bfloat16", 64, 64, 64), CONFIGS, exploding, timer=timer) == CONFIGS[1]
    # a second key merges into the same file
    autotune.pick("matmul", ("float32", 64, 64, 64), CONFIGS, bench, timer=timer)
    assert len(json.loads((cache_dir / "autotune.json").read_text())["entries"]) == 2
    autotune.clear_cache(disk=True)
    assert not (cache_dir / "autotune.json").exists()


def test_corrupt_cache_file_is_ignored(cache_dir):
    (cache_dir / "autotune.json").write_text("{not json")
    calls = []
    bench, timer = _fake(calls)
    assert autotune.pick("k", (1,), CONFIGS, bench, timer=timer) == CONFIGS[1]
    assert json.loads((cache_dir / "autotune.json").read_text())["version"] == 1


def test_failing_configs_are_skipped(cache_dir):
    calls = []
    bench, timer = _fake(calls)

    def bench_oom(cfg):
        if cfg["BLOCK"] == 128:
            raise RuntimeError("out of resources: shared memory")
        bench(cfg)

    assert autotune.pick("k", (2,), CONFIGS, bench_oom, timer=timer) == CONFIGS[2]

    def all_fail(cfg):
        raise RuntimeError("nope")

    with pytest.raises(RuntimeError, match="every config failed"):
        autotune.pick("k", (3,), CONFIGS, all_fail, timer=timer)
    with pytest.raises(ValueError, match="no candidate"):
        autotune.pick("k", (4,), [], bench, timer=timer)


def test_returned_config_is_a_copy(cache_dir):
    calls = []
    bench, timer = _fake(calls)
    cfg = autotune.pick("k", (5,), CONFIGS, bench, timer=timer)
    cfg["BLOCK"] = -1
    assert autotune.pick("k", (5,), CONFIGS, bench, timer=timer)["BLOCK"] == 128


def test_budget_env_limits_what_is_timed(cache_dir, monkeypatch):
    tried = []

    def bench(cfg):
        tried.append(cfg["BLOCK"])
        if cfg["BLOCK"] == CONFIGS[0]["BLOCK"]:
            raise RuntimeError("out of shared memory")

    monkeypatch.setenv("CONCH_AUTOTUNE", "off")
    assert autotune.pick("b", ("float32", 1), CONFIGS, bench, timer=lambda fn: fn() or 1.0) == CONFIGS[1]
    assert tried == [CONFIGS[0]["BLOCK"], CONFIGS[1]["BLOCK"]]  # no warm-up, no repeats
    assert autotune.pick("b", ("float32", 1), CONFIGS, bench, timer=lambda fn: fn() or 1.0) == CONFIGS[1]
    assert len(tried) == 2  # remembered: no second probe launch for the same key
    assert not (cache_dir / "autotune.json").exists()  # untimed choices never reach the disk cache
    tried.clear()
    monkeypatch.setenv("CONCH_AUTOTUNE", "2")
    autotune.pick("b", ("float32", 2), CONFIGS, bench, timer=lambda fn: fn() or 1.0)
    assert set(tried) == {CONFIGS[0]["BLOCK"], CONFIGS[1]["BLOCK"]}
