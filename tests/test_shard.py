"""Rendezvous sharding of cameras over workers: balance, minimal movement, stability, parsing."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.shard import (
    ShardError,
    ShardSpec,
    assign,
    moved,
    ordinal_from_env,
    parse_shard,
    shard_of,
)

REPO = Path(__file__).resolve().parent.parent
CAMERAS = [f"site-{i // 40}/cam-{i:04d}" for i in range(1000)]  # names as sites write them


def binomial_sd(n: int, p: float) -> float:
    return math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("shards", [1, 2, 3, 5, 10, 50])
def test_every_camera_on_exactly_one_shard_and_balanced(shards: int) -> None:
    table = assign(CAMERAS, shards)
    assert sorted(c for cams in table.values() for c in cams) == sorted(CAMERAS)
    assert set(table) == set(range(shards))
    mean, sd = len(CAMERAS) / shards, binomial_sd(len(CAMERAS), 1 / shards)
    for s, cams in table.items():
        assert abs(len(cams) - mean) <= 4 * sd + 1e-9, (s, len(cams), mean, sd)
        assert all(ShardSpec(s, shards).owns(c) for c in cams)


@pytest.mark.parametrize("before", [1, 2, 3, 4, 9, 10, 49, 50])
def test_adding_a_worker_moves_about_one_in_n_plus_one_all_to_the_new_shard(before: int) -> None:
    after = before + 1
    gone = moved(CAMERAS, before, after)
    expected, sd = len(CAMERAS) / after, binomial_sd(len(CAMERAS), 1 / after)
    assert abs(len(gone) - expected) <= 4 * sd, (len(gone), expected)
    # nothing moves between the old shards: the new shard only takes
    assert all(shard_of(c, after) == before for c in gone)
    # and removing that worker again gives exactly the old placement back
    assert moved(CAMERAS, after, before) == gone


@pytest.mark.parametrize("count", [3, 7])
def test_stable_across_processes_hash_seeds_and_camera_order(count: int) -> None:
    here = [shard_of(c, count) for c in CAMERAS[:200]]
    assert assign(reversed(CAMERAS[:200]), count) == assign(CAMERAS[:200], count)
    code = ("from pipeline.shard import shard_of\n"
            f"print([shard_of(f'site-{{i // 40}}/cam-{{i:04d}}', {count}) for i in range(200)])")
    for seed in ("0", "12345"):
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                             text=True, timeout=60,
                             env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)})
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == str(here)


def test_a_restarted_worker_takes_back_exactly_its_own() -> None:
    spec = ShardSpec(2, 5)
    first = [c for c in CAMERAS if spec.owns(c)]
    again = [c for c in CAMERAS if parse_shard("2/5").owns(c)]  # a new process, same spec
    assert first == again and first
    # a camera added to the site does not move any other camera
    more = [*CAMERAS, "new-camera"]
    assert [c for c in more if spec.owns(c) and c != "new-camera"] == first


@pytest.mark.parametrize("text, env, host, expected", [
    ("0/3", {}, "laptop", (0, 3)),
    (" 2 / 3 ", {}, "laptop", (2, 3)),
    ("auto/4", {"CROWDSTREAM_SHARD": "3"}, "laptop", (3, 4)),
    ("auto/4", {}, "crowdstream-worker-1", (1, 4)),
    ("auto/4", {"CROWDSTREAM_SHARD": "0"}, "crowdstream-worker-2", (0, 4)),  # env wins
    ("auto/12", {}, "cs-worker-11", (11, 12)),
])
def test_parse(text: str, env: dict[str, str], host: str, expected: tuple[int, int]) -> None:
    spec = parse_shard(text, env, host)
    assert (spec.index, spec.count) == expected
    assert str(spec) == f"{expected[0]}/{expected[1]}"


@pytest.mark.parametrize("text, env, host, message", [
    ("3/3", {}, "h", "shard index 3 is not in 0..2"),
    ("0/0", {}, "h", "number of shards must be >= 1"),
    ("1", {}, "h", "expected I/N (e.g. 0/3) or auto/N, got '1'"),
    ("-1/3", {}, "h", "expected I/N"),
    ("a/3", {}, "h", "expected I/N"),
    ("auto/3", {}, "laptop", "set $CROWDSTREAM_SHARD, or run in a StatefulSet"),
    ("auto/3", {"CROWDSTREAM_SHARD": "x"}, "h", "$CROWDSTREAM_SHARD must be a shard index"),
    ("auto/3", {}, "crowdstream-worker-3", "shard index 3 is not in 0..2"),
])
def test_parse_errors_say_what_to_write(text: str, env: dict[str, str], host: str,
                                        message: str) -> None:
    with pytest.raises(ShardError, match=None) as e:
        parse_shard(text, env, host)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_ordinal_from_the_real_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROWDSTREAM_SHARD", "5")
    assert ordinal_from_env() == 5
