"""Plugins: what happens to each HTTP transaction routed to a stack (capture, log, report, detect).

    stacks = build_stacks(config)
    ex = HttpExchange(tx, conn.context(layer), id=..., ts=..., ts_ns=...)  # conn: ConnContext snapshot
    for item in stacks["default"].on_http(ex):   # events (Structs) and objects (StoredObject)
        ...

Events carry anonymized metadata only; objects carry what the capture level allows.
"""

from qtap_async.events import ConnContext
from qtap_async.events.http import HttpTransactionEvent
from qtap_async.events.issue import IssueEvent
from qtap_async.events.request import RequestEvent
from qtap_async.plugins.access_logs import AccessLogs
from qtap_async.plugins.anonymize import auth_token, hash_token, mask_query, masked_target, path_template
from qtap_async.plugins.base import Emission, FirstMatch, Plugin, is_object
from qtap_async.plugins.detect_errors import DetectErrors
from qtap_async.plugins.exchange import ExchangeContext, HttpExchange, host_of, join_headers
from qtap_async.plugins.http_capture import HttpCapture
from qtap_async.plugins.payload import render_object
from qtap_async.plugins.report_usage import ReportUsage
from qtap_async.plugins.stack import Stack, build_plugin, build_stacks

__all__ = [
    "AccessLogs",
    "ConnContext",
    "DetectErrors",
    "Emission",
    "ExchangeContext",
    "FirstMatch",
    "HttpCapture",
    "HttpExchange",
    "HttpTransactionEvent",
    "IssueEvent",
    "Plugin",
    "ReportUsage",
    "RequestEvent",
    "Stack",
    "auth_token",
    "build_plugin",
    "build_stacks",
    "hash_token",
    "host_of",
    "is_object",
    "join_headers",
    "mask_query",
    "masked_target",
    "path_template",
    "render_object",
]
