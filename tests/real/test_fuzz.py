"""Fuzzing the real server from outside: the README's promises hold for what strangers send.

One server (``clipperlab serve`` in its own process: a request that crashes it fails the
case that did it, not the test run, and its RSS is its own) with no-op models, deployed by
``tests.real.oracle.deploy``; each test draws cases of one kind from
``tests.real.strategies`` and the oracle judges every answer (see its docstring for the
promises).  Every 200 cases a health check needs a real prediction for a fresh input.
The last fuzz test checks that no replica stayed busy and that memory stayed bounded.

Reproducible: ``derandomize=True`` (the same cases on every run), no example database,
no shrinking (a failure prints the case as a curl or printf line; ``scripts/fuzz.py``
runs many more cases).  About 2,250 cases in all, under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from clipperlab.real.client import AdminClient
from tests.real import strategies as s
from tests.real.oracle import (
    FuzzEnv,
    Verdict,
    deploy,
    rss_bytes,
    send_http,
    start_serve,
    stop_serve,
)
from tests.servers import hello

# the server's growth over the whole module
RSS_GROWTH_LIMIT_BYTES = 256 << 20

def fuzz(max_examples: int) -> settings:
    """The fuzz tests' settings: reproducible, no database, no shrinking."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )

@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzEnv]:
    store = Path(tmp_path_factory.mktemp("fuzz"))
    proc, ports = start_serve(store, store / "server.log")
    try:
        deploy(AdminClient(f"127.0.0.1:{ports['admin']}"))
        e = FuzzEnv(ports, hello=hello, rss_pid=proc.pid, proc=proc)
        try:
            yield e
        finally:
            e.close()
    finally:
        stop_serve(proc)


def _check(env: FuzzEnv, case: s.HttpCase | s.RpcCase | s.OddOutputCase) -> None:
    v: Verdict = env.run(case)
    assert not v.violations, (
        f"{case.route}: " + "; ".join(v.violations)
        + "\nreproduce: " + case.reproduce("127.0.0.1", env.port_of(case)))

@fuzz(600)
@given(case=s.clipper_cases())
def test_clipper_api(env: FuzzEnv, case: s.HttpCase) -> None:
    """``/{app}/predict`` and ``/update``: a 4xx naming the problem or an answer."""
    _check(env, case)

@fuzz(500)
@given(case=s.oip_cases())
def test_open_inference_protocol(env: FuzzEnv, case: s.HttpCase) -> None:
    """``/v2``: tensors of every wrong shape and type get a 4xx, never a 500."""
    _check(env, case)

@fuzz(300)
@given(case=s.admin_cases())
def test_admin_api(env: FuzzEnv, case: s.HttpCase) -> None:
    """``/admin/*`` with bodies of every shape: a JSON answer or a JSON error."""
    _check(env, case)

@fuzz(350)
@given(case=s.raw_http_cases())
def test_raw_http(env: FuzzEnv, case: s.HttpCase) -> None:
    """Pipelining, chunks, upgrades, HEAD, big headers: one answer per request."""
    _check(env, case)

@fuzz(300)
@given(case=s.rpc_cases())
def test_rpc_frames(env: FuzzEnv, case: s.RpcCase) -> None:
    """Garbage on the container port drops that connection only."""
    _check(env, case)

@fuzz(200)
@given(case=s.odd_output_cases())
def test_odd_container_outputs(env: FuzzEnv, case: s.OddOutputCase) -> None:
    """A replica answering 2**70, complex numbers, NaN, bytes ...: every query answered."""
    _check(env, case)

def test_after_fuzzing_nothing_is_wedged_and_memory_is_bounded(env: FuzzEnv) -> None:
    """Runs last in this module: health, no busy replica once idle, bounded RSS."""
    assert env.cases > 0
    problems = env.check_health() + env.check_idle()
    assert not problems, problems
    growth = rss_bytes(env.rss_pid) - env.rss_start
    assert growth < RSS_GROWTH_LIMIT_BYTES, f"RSS grew by {growth >> 20} MiB"


@pytest.mark.parametrize(("depth", "kind"), s.DEEP_BODIES)
def test_nesting_past_the_parser_stack_gets_400(tmp_path: Path, depth: int, kind: str) -> None:
    """A body nested deeper than any C parser's stack is refused, and the server lives."""
    proc, ports = start_serve(tmp_path, tmp_path / "server.log")
    try:
        deploy(AdminClient(f"127.0.0.1:{ports['admin']}"))
        raw = s.http_request("POST", f"/{s.APP}/predict", s.deep_body(depth, kind))
        answers, _, ended = send_http(raw, "127.0.0.1", ports["query"])
        assert proc.poll() is None, f"the server died ({proc.returncode}) on depth {depth}"
        assert [a.status for a in answers] == [400], (ended, answers)
    finally:
        stop_serve(proc)
