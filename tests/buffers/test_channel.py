import asyncio

import pytest

from qtap_async.buffers import Channel, ChannelClosed


async def test_fifo_and_close_drains_then_ends() -> None:
    ch: Channel[bytes] = Channel(max_events=10, max_bytes=1000)
    for i in range(5):
        assert ch.send_nowait(b"%d" % i)
    ch.close()
    got = [item async for item in ch]
    assert got == [b"0", b"1", b"2", b"3", b"4"]
    with pytest.raises(ChannelClosed):
        ch.send_nowait(b"x")


async def test_send_nowait_drops_and_counts_when_full_by_events() -> None:
    ch: Channel[bytes] = Channel(max_events=3, max_bytes=1 << 20, when_full="block")
    results = [ch.send_nowait(b"abcd") for _ in range(5)]
    assert results == [True, True, True, False, False]
    st = ch.statistics()
    assert (st.depth_events, st.dropped_events, st.dropped_bytes) == (3, 2, 8)


async def test_bounded_by_bytes() -> None:
    ch: Channel[bytes] = Channel(max_events=100, max_bytes=10)
    assert ch.send_nowait(b"12345")
    assert ch.send_nowait(b"12345")
    assert not ch.send_nowait(b"1")
    assert ch.nbytes == 10


async def test_oversized_item_passes_an_empty_channel() -> None:
    ch: Channel[bytes] = Channel(max_events=10, max_bytes=4)
    assert ch.send_nowait(b"0123456789")
    assert not ch.send_nowait(b"x")


async def test_drop_newest_send_never_waits() -> None:
    ch: Channel[bytes] = Channel(max_events=1, max_bytes=100, when_full="drop_newest")
    assert await ch.send(b"a")
    assert not await ch.send(b"b")
    assert ch.statistics().dropped_events == 1
    assert await ch.recv() == b"a"


async def test_block_waits_for_room_and_keeps_order() -> None:
    ch: Channel[int] = Channel(max_events=2, max_bytes=1 << 20, when_full="block", sizeof=lambda _: 1)
    sent: list[int] = []

    async def producer() -> None:
        for i in range(6):
            await ch.send(i)
            sent.append(i)
        ch.close()

    task = asyncio.create_task(producer())
    await asyncio.sleep(0.01)
    assert sent == [0, 1]  # blocked on the third
    got = [x async for x in ch]
    await task
    assert got == list(range(6))
    assert ch.statistics().blocked_sends >= 1
    assert ch.statistics().dropped_events == 0


async def test_nowait_does_not_jump_ahead_of_blocked_senders() -> None:
    ch: Channel[int] = Channel(max_events=1, max_bytes=100, sizeof=lambda _: 1)
    ch.send_nowait(0)
    blocked = asyncio.create_task(ch.send(1))
    await asyncio.sleep(0)
    assert await ch.recv() == 0
    # room now, but the blocked sender is owed it: the drain side drops instead of reordering
    assert not ch.send_nowait(2)
    await blocked
    assert await ch.recv() == 1


async def test_recv_batch_limits_and_linger() -> None:
    ch: Channel[bytes] = Channel(max_events=100, max_bytes=1 << 20)
    for _ in range(7):
        ch.send_nowait(b"xx")
    assert len(await ch.recv_batch(max_events=3, max_bytes=1000, linger=0)) == 3
    assert len(await ch.recv_batch(max_events=10, max_bytes=4, linger=0)) == 2
    # two left; linger waits for more that arrive in time
    loop = asyncio.get_running_loop()
    loop.call_later(0.02, ch.send_nowait, b"late")
    batch = await ch.recv_batch(max_events=3, max_bytes=1000, linger=1.0)
    assert batch == [b"xx", b"xx", b"late"]
    ch.close()
    assert await ch.recv_batch(10, 1000, 0.1) == []


async def test_close_wakes_blocked_sender() -> None:
    ch: Channel[int] = Channel(max_events=1, max_bytes=100, sizeof=lambda _: 1)
    ch.send_nowait(0)
    task = asyncio.create_task(ch.send(1))
    await asyncio.sleep(0)
    ch.close()
    with pytest.raises(ChannelClosed):
        await task


async def test_full_says_when_another_item_would_not_fit() -> None:
    ch: Channel[bytes] = Channel(max_events=3, max_bytes=10, when_full="drop_newest", sizeof=len)
    assert not ch.full  # empty: even an oversized item passes
    assert ch.send_nowait(b"x" * 20) and ch.full  # over the byte bound
    assert await ch.recv() == b"x" * 20 and not ch.full
    for _ in range(3):
        assert not ch.full and ch.send_nowait(b"a")
    assert ch.full and not ch.send_nowait(b"a")  # at the event bound: what full said, send_nowait does
