"""User-space half of TLS plaintext capture: find TLS libraries in processes and derive cheap, provably
safe uprobe sites for their read/write functions (see shared/PROBES.md and probe_points.py).

Using it from the attach glue::

    libs = scan_all()                      # {FileKey(dev, ino): TlsLibrary}; problems: default_scanner().problems
    for lib in libs.values():              # lib.open_path reaches the file (containers: /proc/PID/root/...)
        for plan in lib.plans:             # one ProbePlan per function found (SSL_read, gnutls_record_recv, ...)
            for site in plan.sites:        # attach by FILE OFFSET: uprobe(lib.open_path, site.offset,
                ...                        #   retprobe=site.role == "uretprobe"); dedupe by (key, offset, role):
                                           #   plans of one file may share a return site (SSL_read/SSL_read_ex);
                                           #   attachments(lib) does that merge

Reading the sites of a plan (``site.regs`` says which register holds what at that site):

- ``entry``: save ``regs`` per thread (with rsp), e.g. buf/num, or ``processed_ptr`` for OpenSSL's internal call;
  a write plan without return sites (``ret_meaning == "none"``, Go Write) emits ``buf[:len]`` right here.
- ``return`` / ``uretprobe``: consume the saved entry only when ``rsp_now - rsp_saved == site.sp_delta``; then
  ``ret`` is in ``regs["ret"]`` (``eax``: read it as a 32-bit int) and ``plan.length`` says how many bytes of the
  saved buffer hold plaintext (``ret if ret > 0``, ``*processed_ptr if ret > 0``, ``*written if ret == 1``).
- ``go_ret``: Go RET sites of Read (rax = n). Pair with the entry by goroutine: key on r14, which holds the
  current g in Go's register ABI at every entry and RET; never by thread (a goroutine blocked in Read resumes
  on another thread) or rsp (Go moves stacks).
  ``lib.go_offsets`` leads from the *tls.Conn (rax at entry) to the socket fd.
- ``plan.fast`` False means the classic entry + uretprobe (or Go RETs), each hit single-stepped (~14 us);
  ``plan.reason`` says why; ``plan.candidates`` are cheaper unproven sites, to validate by byte-exact tests.
"""

from qtap_async.tls.attach import attachments
from qtap_async.tls.describe import describe, describe_data, describe_text
from qtap_async.tls.discover import Mapping, Scanner, default_scanner, parse_maps, scan_all, scan_pid
from qtap_async.tls.elf import ElfFormatError, ElfImage
from qtap_async.tls.libraries import analyze_file
from qtap_async.tls.model import (
    Attachment,
    FileKey,
    GoConnOffsets,
    ProbePlan,
    ProbeSite,
    ScanProblem,
    TlsFunction,
    TlsLibrary,
)
from qtap_async.tls.x86 import classify_emulated

__all__ = [
    "Attachment",
    "ElfFormatError",
    "ElfImage",
    "FileKey",
    "GoConnOffsets",
    "Mapping",
    "ProbePlan",
    "ProbeSite",
    "ScanProblem",
    "Scanner",
    "TlsFunction",
    "TlsLibrary",
    "analyze_file",
    "attachments",
    "classify_emulated",
    "default_scanner",
    "describe",
    "describe_data",
    "describe_text",
    "parse_maps",
    "scan_all",
    "scan_pid",
]
