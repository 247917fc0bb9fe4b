"""The supervisor's control port under hostile calls (``tools/fuzz.py`` drives a kernel; this
drives the control methods): any parameters, of any type, count and nesting, from an
admin gone bad, get a reply -- a result or an error map -- and the supervisor keeps
serving that connection and its others, with the farm unchanged.  Bounded to seconds."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rawpeer
from farmctl import Farm, raw_call, start_farm
from rawpeer import Peer

CONTROL = ["cluster.map", "cluster.status", "cluster.scale", "cluster.scale_cancel",
           "auth.hello", "tenant.add", "tenant.remove", "tenant.rotate", "tenant.list"]

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-2**63, max_value=2**64 - 1),
    st.sampled_from([0, 1, 2, -1, 2**31, 2**63 - 1, 2**64 - 1, -2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=300),
    st.sampled_from(["", "admin", "a\x00b", "../x", "*", "[", "x" * 5000, "t-1", "é中"]),
    st.binary(max_size=300))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5),
    st.dictionaries(st.one_of(st.text(max_size=5), st.integers(-2**63, 2**63 - 1)), inner,
                    max_size=3)),
    max_leaves=20)


def deep(depth: int) -> Any:
    obj: Any = None
    for _ in range(depth):
        obj = [obj]
    return obj


params = st.one_of(st.lists(values, max_size=5),
                   st.sampled_from([[deep(200)], [deep(500)], [["p"] * 10_000]]))


def harmless(method: str, args: list[Any]) -> bool:
    """Calls the fuzz leaves out: a new admin token (the peer's own would stop working)."""
    return not (method == "tenant.rotate" and args[:1] == ["admin"])


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    # One kernel at most: a fuzzed `cluster.scale(1)` is a no-op, anything larger refused.
    config = "[supervisor]\nmax_kernels = 1\n"
    with start_farm(tmp_path_factory.mktemp("control"), 1, config_text=config) as farm:
        yield farm


@pytest.fixture
def peers(farm: Farm) -> Iterator[tuple[Peer, Peer]]:
    victim, bystander = Peer(farm.control), Peer(farm.control)
    yield victim, bystander
    victim.close()
    bystander.close()


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(method=st.sampled_from(CONTROL) | st.text(max_size=40), args=params)
def test_any_control_call_is_answered_and_the_supervisor_serves_on(
        farm: Farm, peers: tuple[Peer, Peer], method: str, args: list[Any]) -> None:
    victim, bystander = peers
    if not harmless(method, args):
        return
    reply = victim.call(7, method, *args)
    assert reply is not None, (method, args)  # the connection was not dropped
    assert reply[:2] == [1, 7], reply
    error = reply[2]
    assert error is None or (isinstance(error, dict) and isinstance(error["code"], str)), reply
    assert not (error and error["code"] == "EIO"), reply  # a client's mistake, not a fault
    assert not (error and "positional argument" in error["message"]), reply  # Python's words
    assert bystander.call(8, "cluster.map")[2] is None


@pytest.mark.parametrize("method, args, says", [
    ("cluster.scale", [], "cluster.scale takes 1 parameter (n), got 0"),
    ("cluster.map", [1, 2], "cluster.map takes no parameters, got 2"),
    ("tenant.add", [], "tenant.add takes 1 to 3 parameters (name[, volumes[, namespaces]]), "
                       "got 0"),
    ("auth.hello", [], "auth.hello takes 1 parameter (token), got 0"),
])
def test_a_wrong_count_is_einval_in_the_contracts_words(
        peers: tuple[Peer, Peer], method: str, args: list[Any], says: str) -> None:
    reply = peers[0].call(9, method, *args)
    assert reply[2]["code"] == "EINVAL" and reply[2]["message"].endswith(says), reply


def test_after_the_fuzz_the_farm_is_unchanged(farm: Farm) -> None:
    cluster = farm.cluster_map()
    assert len(cluster["kernels"]) == 1 and cluster["kernels"][0]["state"] == "running"
    assert farm.proc.poll() is None
    assert "Traceback" not in farm.log()
    assert raw_call(rawpeer.kernel_addr(cluster), "kernel.ping")["kernel"] == 0
