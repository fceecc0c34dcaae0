"""User-space half of TLS plaintext capture: find TLS libraries in processes and derive cheap, provably
safe uprobe sites for their read/write functions (see shared/PROBES.md and probe_points.py)."""

from qtap_async.tls.describe import describe, describe_data
from qtap_async.tls.discover import Mapping, Scanner, default_scanner, parse_maps, scan_all, scan_pid
from qtap_async.tls.elf import ElfFormatError, ElfImage
from qtap_async.tls.libraries import analyze_file
from qtap_async.tls.model import (
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
    "classify_emulated",
    "default_scanner",
    "describe",
    "describe_data",
    "parse_maps",
    "scan_all",
    "scan_pid",
]
