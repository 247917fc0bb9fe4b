"""The latency histogram agrees with exact percentiles to within its bucket precision."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernelfarm.bench.histogram import DEFAULT_HIGHEST, Histogram

# Latencies cluster (loopback microseconds) but have long tails (fsync, GC pauses):
# draw from both so every bucket regime is hit.
values = st.one_of(st.integers(0, 300), st.integers(0, 10**6),
                   st.integers(0, DEFAULT_HIGHEST))
value_lists = st.lists(values, min_size=1, max_size=300)
percentiles = st.sampled_from([0, 1, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 100])


def reference_percentile(ordered: list[int], p: float) -> int:
    """Nearest rank, in exact decimal arithmetic: the rank-th smallest value."""
    rank = max(1, math.ceil(Fraction(str(p)) * len(ordered) / 100))
    return ordered[rank - 1]


@settings(max_examples=200, deadline=None)
@given(value_lists, percentiles)
def test_percentile_is_the_top_of_the_exact_values_bucket(data: list[int], p: float) -> None:
    histogram = Histogram()
    histogram.record_many(data)
    exact = reference_percentile(sorted(data), p)
    got = histogram.percentile(p)
    assert got == histogram.bucket_bounds(histogram.bucket_index(exact))[1]
    # Two significant digits: never below the exact value, less than 1/128 above it.
    assert exact <= got <= exact + exact / 128


@settings(max_examples=200, deadline=None)
@given(st.integers(0, DEFAULT_HIGHEST))
def test_every_value_lies_within_its_buckets_bounds(value: int) -> None:
    histogram = Histogram()
    low, high = histogram.bucket_bounds(histogram.bucket_index(value))
    assert low <= value <= high
    assert high - low <= max(low, 1) / 128


def test_buckets_tile_the_range_without_gaps() -> None:
    histogram = Histogram(highest=10**7)
    expected_low = 0
    for index in range(histogram.bucket_index(10**7) + 1):
        low, high = histogram.bucket_bounds(index)
        assert low == expected_low
        expected_low = high + 1


@settings(max_examples=100, deadline=None)
@given(value_lists, value_lists)
def test_merge_equals_recording_everything_in_one(first: list[int], second: list[int]) -> None:
    a, b, together = Histogram(), Histogram(), Histogram()
    a.record_many(first)
    b.record_many(second)
    together.record_many(first + second)
    a.merge(b)
    assert a == together
    assert a.count == len(first) + len(second)


@settings(max_examples=100, deadline=None)
@given(value_lists)
def test_dict_round_trip_through_json_and_msgpack(data: list[int]) -> None:
    histogram = Histogram()
    for value in data:
        histogram.record(value)
    as_json = Histogram.from_dict(json.loads(json.dumps(histogram.to_dict())))
    as_msgpack = Histogram.from_dict(msgpack.unpackb(msgpack.packb(histogram.to_dict())))
    assert as_json == histogram
    assert as_msgpack == histogram
    assert as_json.percentile(99) == histogram.percentile(99)


@settings(max_examples=100, deadline=None)
@given(value_lists)
def test_mean_is_within_a_bucket_of_the_exact_mean(data: list[int]) -> None:
    histogram = Histogram()
    histogram.record_many(data)
    exact = sum(data) / len(data)
    assert abs(histogram.mean - exact) <= exact / 256 + 0.5


def test_record_with_a_count_is_recording_that_many_times() -> None:
    once, many = Histogram(), Histogram()
    once.record(123_456, 7)
    for _ in range(7):
        many.record(123_456)
    assert once == many
    assert once.count == 7


def test_reset_forgets_in_place() -> None:
    histogram = Histogram()
    record = histogram.record
    record(5)
    histogram.reset()
    assert histogram.count == 0
    record(9)  # a bound method taken before the reset still feeds this histogram
    assert histogram.count == 1
    assert histogram.percentile(100) == 9


def test_summary_is_in_microseconds() -> None:
    histogram = Histogram()
    histogram.record_many([1000] * 99 + [2_000_000])
    summary = histogram.summary_us()
    assert summary["p50_us"] == pytest.approx(1.0, rel=0.01)
    assert summary["max_us"] == pytest.approx(2000, rel=0.01)


@pytest.mark.parametrize("value", [-1, -(10**9), DEFAULT_HIGHEST + 1])
def test_values_outside_the_range_are_refused(value: int) -> None:
    histogram = Histogram()
    with pytest.raises(ValueError, match="outside"):
        histogram.record(value)
    with pytest.raises(ValueError, match="outside"):
        histogram.record_many([1, value])
    assert histogram.count == 1  # the record_many prefix before the bad value


def test_an_empty_histogram_has_no_percentile_or_mean() -> None:
    with pytest.raises(ValueError, match="empty"):
        Histogram().percentile(50)
    with pytest.raises(ValueError, match="empty"):
        _ = Histogram().mean


@pytest.mark.parametrize("p", [-0.1, 100.1])
def test_percentiles_outside_0_to_100_are_refused(p: float) -> None:
    histogram = Histogram()
    histogram.record(1)
    with pytest.raises(ValueError, match="percentile"):
        histogram.percentile(p)


def test_histograms_with_different_layouts_do_not_merge() -> None:
    with pytest.raises(ValueError, match="layouts"):
        Histogram(sub_bucket_bits=7).merge(Histogram(sub_bucket_bits=6))


@pytest.mark.parametrize("bad", [
    {},
    {"highest": 10, "sub_bucket_bits": 7, "buckets": [[10**9, 1]]},
    {"highest": 10, "sub_bucket_bits": 7, "buckets": [[1, -1]]},
    {"highest": 10, "sub_bucket_bits": 7, "buckets": [["1", 1]]},
    {"highest": 10, "sub_bucket_bits": 7, "buckets": [3]},
    {"highest": 10, "sub_bucket_bits": 7, "buckets": [[1, 2, 3]]},
    {"highest": "10", "sub_bucket_bits": 7, "buckets": []},
    {"highest": 10, "sub_bucket_bits": 99, "buckets": []},
    [],
])
def test_malformed_dicts_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        Histogram.from_dict(bad)  # type: ignore[arg-type]
