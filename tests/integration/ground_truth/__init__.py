"""Ground-truth lifecycle matrix (issue 19): every scenario knows its own truth (pids it started, ports its
peers saw through getsockname/getpeername, bytes they counted, requests the servers logged) and compares every
field of every connection and transaction the agent reported against it."""
