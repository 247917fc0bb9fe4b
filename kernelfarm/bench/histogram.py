"""An HDR-style latency histogram: log-linear buckets, cheap to record, mergeable.

Latencies span five decades (tens of microseconds on loopback to seconds behind an
fsync), so fixed-width buckets would either blur the fast end or cost megabytes.  As
HdrHistogram does, every power of two is split into the same number of linear
sub-buckets: with ``sub_bucket_bits=7`` each bucket is narrower than 1/128 of its values,
so any percentile is within 0.8% (two significant decimal digits) of the exact one, and
60 s in nanoseconds fits in about 3,900 counters.

Recording is one ``bit_length``, a shift and a list increment, because it runs once per
response in the load generator's hot loop; counts and means are derived when asked.
Values are non-negative integers (the load generator records nanoseconds).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

DEFAULT_HIGHEST = 60 * 10**9
"""60 s in nanoseconds: no request in a bounded benchmark waits longer."""


class Histogram:
    """Counts of integer values in log-linear buckets; see the module docstring."""

    __slots__ = ("_bits", "_linear_bits", "_linear_limit", "_highest", "_counts")

    def __init__(self, highest: int = DEFAULT_HIGHEST, sub_bucket_bits: int = 7) -> None:
        if not 1 <= sub_bucket_bits <= 16:
            raise ValueError(f"sub_bucket_bits must be 1..16, not {sub_bucket_bits}")
        if highest < 1:
            raise ValueError(f"highest must be positive, not {highest}")
        self._bits = sub_bucket_bits
        # Values below 2**(bits+1) get a bucket each; above, a power of two's span is
        # cut into 2**bits buckets whose width doubles with every power.
        self._linear_bits = sub_bucket_bits + 1
        self._linear_limit = 1 << self._linear_bits
        self._highest = highest
        self._counts = [0] * (self.bucket_index(highest) + 1)

    # -- recording (hot) --------------------------------------------------------------------

    def bucket_index(self, value: int) -> int:
        """The bucket holding ``value``: ``(shift << bits) + (value >> shift)``."""
        shift = value.bit_length() - self._linear_bits
        if shift <= 0:
            return value
        return (shift << self._bits) + (value >> shift)

    def record(self, value: int, count: int = 1) -> None:
        """Count ``value`` ``count`` times; raises ``ValueError`` outside ``0..highest``.

        ``count`` lets a caller that saw the same value many times (every reply of one
        read, timed against one batch's send) pay for the bucket arithmetic once.
        """
        if value < 0 or value > self._highest:
            raise ValueError(f"value {value} outside 0..{self._highest}")
        shift = value.bit_length() - self._linear_bits
        if shift <= 0:
            self._counts[value] += count
        else:
            self._counts[(shift << self._bits) + (value >> shift)] += count

    def record_many(self, values: Iterable[int]) -> None:
        """Count every value of ``values`` (same bounds as :meth:`record`)."""
        counts = self._counts
        bits = self._bits
        linear_bits = self._linear_bits
        highest = self._highest
        for value in values:
            if value < 0 or value > highest:
                raise ValueError(f"value {value} outside 0..{highest}")
            shift = value.bit_length() - linear_bits
            if shift <= 0:
                counts[value] += 1
            else:
                counts[(shift << bits) + (value >> shift)] += 1

    def reset(self) -> None:
        """Forget every value, in place, so bound ``record`` methods stay valid."""
        counts = self._counts
        counts[:] = [0] * len(counts)

    # -- buckets ----------------------------------------------------------------------------

    def bucket_bounds(self, index: int) -> tuple[int, int]:
        """The lowest and highest value that land in bucket ``index`` (inclusive)."""
        if index < self._linear_limit:
            return index, index
        shift = (index >> self._bits) - 1
        low = (index - (shift << self._bits)) << shift
        return low, low + (1 << shift) - 1

    # -- reading ----------------------------------------------------------------------------

    @property
    def highest(self) -> int:
        return self._highest

    @property
    def sub_bucket_bits(self) -> int:
        return self._bits

    @property
    def count(self) -> int:
        return sum(self._counts)

    @property
    def mean(self) -> float:
        """Mean of the bucket midpoints (exact below 256, else within half a bucket)."""
        total = 0
        weighted = 0.0
        for index, n in enumerate(self._counts):
            if n:
                low, high = self.bucket_bounds(index)
                total += n
                weighted += n * (low + high) / 2
        if not total:
            raise ValueError("mean of an empty histogram")
        return weighted / total

    def percentile(self, p: float) -> int:
        """The nearest-rank ``p``-th percentile (0..100), as its bucket's highest value.

        Reporting the top of the bucket means a percentile is never below the true one
        and at most one bucket width (<1/2**bits of it) above.
        """
        if not 0 <= p <= 100:
            raise ValueError(f"percentile must be within 0..100, not {p}")
        total = self.count
        if not total:
            raise ValueError("percentile of an empty histogram")
        rank = nearest_rank(p, total)
        seen = 0
        for index, n in enumerate(self._counts):
            seen += n
            if seen >= rank:
                return self.bucket_bounds(index)[1]
        raise AssertionError("unreachable: rank is at most the count")

    def summary_us(self) -> dict[str, float]:
        """p50/p99/p99.9/max and mean in microseconds, for tables (values are in ns)."""
        return {
            "p50_us": self.percentile(50) / 1000,
            "p99_us": self.percentile(99) / 1000,
            "p999_us": self.percentile(99.9) / 1000,
            "max_us": self.percentile(100) / 1000,
            "mean_us": self.mean / 1000,
        }

    # -- combining and crossing process boundaries ------------------------------------------

    def merge(self, other: Histogram) -> None:
        """Add every value counted by ``other`` (same layout required)."""
        if (other._bits, other._highest) != (self._bits, self._highest):
            raise ValueError("cannot merge histograms with different layouts")
        counts = self._counts
        for index, n in enumerate(other._counts):
            if n:
                counts[index] += n

    def to_dict(self) -> dict[str, Any]:
        """A JSON/msgpack-safe form: the layout and the non-empty buckets."""
        return {
            "highest": self._highest,
            "sub_bucket_bits": self._bits,
            "buckets": [[index, n] for index, n in enumerate(self._counts) if n],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        """Rebuild a histogram from :meth:`to_dict`, refusing anything inconsistent."""
        try:
            highest = data["highest"]
            bits = data["sub_bucket_bits"]
            buckets = data["buckets"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a histogram dict: {exc!r}") from exc
        if not isinstance(highest, int) or not isinstance(bits, int):
            raise ValueError("histogram layout must be integers")
        histogram = cls(highest, bits)
        counts = histogram._counts
        for entry in buckets:
            if not (isinstance(entry, (list, tuple)) and len(entry) == 2
                    and isinstance(entry[0], int) and isinstance(entry[1], int)):
                raise ValueError(f"bad bucket {entry!r}")
            index, n = entry
            if not 0 <= index < len(counts) or n < 0:
                raise ValueError(f"bucket {entry!r} outside the histogram")
            counts[index] += n
        return histogram

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return (self._bits, self._highest, self._counts) == (
            other._bits, other._highest, other._counts)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Histogram(count={self.count}, highest={self._highest}, bits={self._bits})"


def nearest_rank(p: float, total: int) -> int:
    """1-based rank of the ``p``-th percentile among ``total`` values (nearest-rank rule).

    Rounded to 9 places first so that float noise (``99.9 * 1000 / 100`` is slightly
    above 999) does not push the rank one value up.
    """
    return max(1, math.ceil(round(p * total / 100, 9)))
