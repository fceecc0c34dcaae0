"""Links on a real kernel: an attached program runs until its link is closed, closing twice is harmless,
and the link says what it is attached to."""

from __future__ import annotations

from pathlib import Path

import pytest

from qtap_async.bpf.ringbuf import RingBuffer
from tests.bpf.programs import build_getppid_ring, getppid_ring, seqs


@pytest.mark.bpf
def test_closing_the_link_detaches_the_program(tmp_path: Path) -> None:
    with getppid_ring(build_getppid_ring(tmp_path)) as ring, RingBuffer(ring.events) as rb:
        (link,) = ring.obj.links
        assert not link.closed
        assert "tp_enter_getppid" in repr(link) and "attached" in repr(link)
        ring.produce(3)
        assert seqs(rb.consume()) == [0, 1, 2]
        with link:
            pass  # leaving the block closes it
        assert link.closed and "closed" in repr(link)
        ring.produce(3)
        assert rb.consume() == [] and ring.counts() == (3, 0)
        link.close()  # twice: nothing happens
        # The program itself is still loaded: attaching it again makes it run again.
        with ring.obj.program("tp_enter_getppid").attach():
            ring.produce(2)
        ring.produce(2)
        assert seqs(rb.consume()) == [3, 4]
