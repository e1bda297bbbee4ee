"""MicroBatcher on its own: batch sizes, waiting, keys, the queue bound, failures and abandoned items."""
from __future__ import annotations

import asyncio

import pytest

from imcap.serve.batching import MicroBatcher, QueueFull


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


class Recorder:
    """A batch function that doubles its payloads and records each call as (key, payloads)."""

    def __init__(self, fail_key=None) -> None:
        self.calls: list[tuple] = []
        self.fail_key = fail_key

    def __call__(self, key, payloads):
        self.calls.append((key, list(payloads)))
        if key == self.fail_key:
            raise ValueError(f"bad key {key}")
        return [2 * p for p in payloads]


async def _started(run_batch, **kw) -> MicroBatcher:
    batcher = MicroBatcher(run_batch, **kw)
    batcher.start()
    return batcher


def test_batches_fill_up_to_max_batch_in_order():
    async def main():
        rec = Recorder()
        batcher = await _started(rec, max_batch=4, max_wait_ms=50)
        done = await asyncio.gather(*batcher.submit("k", list(range(10))))
        await batcher.stop()
        return rec, done

    rec, done = _run(main())
    assert [len(p) for _, p in rec.calls] == [4, 4, 2]
    assert [d.output for d in done] == [2 * i for i in range(10)]
    assert [d.batch_size for d in done] == [4] * 8 + [2] * 2


def test_lone_item_waits_max_wait_but_full_batch_does_not():
    async def main():
        batcher = await _started(Recorder(), max_batch=4, max_wait_ms=200)
        lone = await batcher.submit("k", [1])[0]
        full = await asyncio.gather(*batcher.submit("k", [1, 2, 3, 4]))
        await batcher.stop()
        return lone, full

    lone, full = _run(main())
    assert lone.queue_ms >= 180
    assert max(d.queue_ms for d in full) < 100
    assert lone.batch_size == 1 and full[0].batch_size == 4


def test_keys_are_never_mixed():
    async def main():
        rec = Recorder()
        batcher = await _started(rec, max_batch=8, max_wait_ms=20)
        futures = [f for i in range(6) for f in batcher.submit("ab"[i % 2], [i])]
        done = await asyncio.gather(*futures)
        await batcher.stop()
        return rec, done

    rec, done = _run(main())
    assert sorted(rec.calls) == [("a", [0, 2, 4]), ("b", [1, 3, 5])]
    assert [d.output for d in done] == [0, 2, 4, 6, 8, 10]


def test_queue_bound_refuses_whole_requests():
    async def main():
        batcher = await _started(Recorder(), max_batch=2, max_queue=3)
        first = batcher.submit("k", [1, 2])
        with pytest.raises(QueueFull):
            batcher.submit("k", [3, 4])
        queued = batcher.queued
        third = batcher.submit("k", [5])
        done = await asyncio.gather(*first, *third)
        await batcher.stop()
        return queued, done

    queued, done = _run(main())
    assert queued == 2  # the refused request left nothing behind
    assert [d.output for d in done] == [2, 4, 10]


def test_failing_batch_fails_only_its_items():
    async def main():
        rec = Recorder(fail_key="bad")
        batcher = await _started(rec, max_batch=4, max_wait_ms=20)
        bad = batcher.submit("bad", [1, 2])
        good = batcher.submit("good", [3])
        results = await asyncio.gather(*bad, *good, return_exceptions=True)
        later = await batcher.submit("good", [4])[0]
        await batcher.stop()
        return results, later

    results, later = _run(main())
    assert all(isinstance(r, ValueError) for r in results[:2])
    assert results[2].output == 6 and later.output == 8


def test_wrong_number_of_outputs_is_an_error():
    async def main():
        batcher = await _started(lambda key, payloads: payloads[:1], max_batch=4, max_wait_ms=20)
        results = await asyncio.gather(*batcher.submit("k", [1, 2]), return_exceptions=True)
        await batcher.stop()
        return results

    assert all(isinstance(r, RuntimeError) for r in _run(main()))


def test_abandoned_items_are_not_run():
    async def main():
        rec = Recorder()
        batcher = await _started(rec, max_batch=4, max_wait_ms=50)
        futures = batcher.submit("k", [1, 2, 3])
        futures[1].cancel()  # e.g. its request timed out
        done = await asyncio.gather(futures[0], futures[2])
        await batcher.stop()
        return rec, done

    rec, done = _run(main())
    assert rec.calls == [("k", [1, 3])]
    assert [d.output for d in done] == [2, 6]


def test_misuse_is_refused():
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), max_batch=0)

    async def main():
        with pytest.raises(RuntimeError):
            MicroBatcher(Recorder()).submit("k", [1])

    _run(main())
