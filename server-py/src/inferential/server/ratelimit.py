"""A token bucket per connection: one flooding peer cannot take the server from the others.

Keyed on the routing identity (the connection), not on the self-declared client id, so
a flood under many invented ids from one connection is one flood. Over the rate, an
observation is refused with a reply (QUEUE_FULL and a retry hint); refusals put the
bucket in debt, and past a burst's worth of debt messages are dropped before they are
even decoded: answering a flood one by one would hand it the server anyway (measured with
server-py/tools/ratelimit_cost.py, docs/security.md "The rate limit": answering each from
its envelope alone took the good robots' p99 from tens of milliseconds to 0.8-1.6 s).
Off unless ``transport.rate_limit_per_s`` is set. No clock of its own: the caller passes
the time.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

#: ``take``'s answer for a message to drop unread
DROP = -1


class RateLimiter:
    """``rate_per_s`` observations per second per connection, bursts of up to ``burst``."""

    #: connections whose bucket is kept (the least recently heard go first; a forgotten
    #: one starts again with a full bucket)
    MAX_CONNECTIONS = 16384

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_ns = rate_per_s / 1e9
        self.burst = float(max(1, burst))
        self._buckets: OrderedDict[bytes, list[float]] = OrderedDict()  # identity -> [tokens, at_ns]
        #: past a burst's worth of refusals, drop unread (True, the decision) or keep answering
        #: each (False: the alternative tools/ratelimit_cost.py measures)
        self.drop_excess = True
        self.limited = 0
        self.dropped = 0

    def take(self, identity: bytes, now_ns: int) -> Optional[int]:
        """None when this connection may send one more observation now; else the ms
        until it may (the retry hint of its refusal), or DROP for a connection that kept
        sending through a burst's worth of refusals."""
        buckets = self._buckets
        bucket = buckets.get(identity)
        if bucket is None:
            bucket = buckets[identity] = [self.burst, float(now_ns)]
            if len(buckets) > self.MAX_CONNECTIONS:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(identity)
            bucket[0] = min(self.burst, bucket[0] + (now_ns - bucket[1]) * self.rate_per_ns)
            bucket[1] = float(now_ns)
        tokens = bucket[0]
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return None
        if tokens <= -self.burst and self.drop_excess:
            # A burst's worth of refusals already went unheeded: this is a flood, and answering
            # each message would spend the server on it. Dropped unread (counted by the caller).
            self.dropped += 1
            return DROP
        # Refusals run up a debt (bounded), so a sender that keeps going waits longer.
        bucket[0] = max(tokens - 1.0, -2.0 * self.burst)
        self.limited += 1
        return max(1, int((1.0 - bucket[0]) / self.rate_per_ns / 1e6) + 1)
