"""In-memory stores and a conntrack fed with hand-made kernel records, for the pipeline tests."""

from __future__ import annotations

from qtap_async.bpf import abi
from qtap_async.context.process import ProcessCache, ProcessInfo
from qtap_async.events.kernel import ConnClose, ConnOpen, Data
from qtap_async.sinks.base import EventRecord, ObjectRef, StoredObject
from qtap_async.sinks.runner import EventSinkRunner, ObjectSinkRunner


class MemoryEvents:
    def __init__(self, name: str = "mem") -> None:
        self.name = name
        self.records: list[EventRecord] = []
        self.closed = False

    async def check(self) -> None:
        return None

    async def start(self) -> None:
        return None

    async def send(self, batch: list[EventRecord]) -> None:
        self.records.extend(batch)

    async def close(self) -> None:
        self.closed = True


class MemoryObjects:
    def __init__(self, name: str = "memobj") -> None:
        self.name = name
        self.objects: list[StoredObject] = []

    async def check(self) -> None:
        return None

    async def start(self) -> None:
        return None

    async def put(self, obj: StoredObject) -> ObjectRef:
        self.objects.append(obj)
        return ObjectRef.of(obj, f"mem://{obj.digest}", self.name)

    async def close(self) -> None:
        return None


def memory_runners() -> tuple[MemoryEvents, MemoryObjects, EventSinkRunner, ObjectSinkRunner]:
    ev, ob = MemoryEvents(), MemoryObjects()
    er = EventSinkRunner(ev)
    orr = ObjectSinkRunner(ob, on_ref=lambda ref: er.channel.send_nowait(ref))
    return ev, ob, er, orr


class FixedProcesses(ProcessCache):
    """Process context by pid from a table instead of /proc."""

    def __init__(self, exes: dict[int, str]) -> None:
        super().__init__()
        self.exes = exes

    def get(self, pid: int, comm_hint: str = "", **_kernel_hints: int) -> ProcessInfo:
        exe = self.exes.get(pid, "")
        return ProcessInfo(pid=pid, exe=exe, comm=exe.rsplit("/", 1)[-1], cmdline=exe, uid=0, user="root",
                           container_id="", cgroup="")


def conn_open(conn_id: int, pid: int, *, raddr: str = "93.184.216.34", rport: int = 80, accept: bool = False,
              ts: int = 1_000) -> ConnOpen:
    role = abi.Role.ACCEPT if accept else abi.Role.CONNECT
    return ConnOpen(ts, conn_id, pid, pid, 0, 2, int(role), False, 40000 if not accept else 8080,
                    rport, "10.0.0.5", raddr, 3, "x")


def data(conn_id: int, pid: int, direction: int, payload: bytes, offset: int, ts: int) -> Data:
    return Data(ts, conn_id, pid, pid, offset, direction, 0, 0, 0, 3, payload)


def conn_close(conn_id: int, pid: int, ts: int) -> ConnClose:
    return ConnClose(ts, conn_id, pid, 0, 0, 1_000)


def http_exchange_records(conn_id: int, pid: int, request: bytes, response: bytes, ts: int = 2_000) -> list[Data]:
    """Data records of one request/response on a connection (client side: send then receive)."""
    return [data(conn_id, pid, 0, request, 0, ts), data(conn_id, pid, 1, response, 0, ts + 1_000_000)]
