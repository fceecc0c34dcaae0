# qtap-async developer tasks. `pip install rust-just` provides `just`.
set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv/bin/"

# Build the BPF objects from bpf/src (commit bpf/build afterwards)
bpf:
    {{venv}}python -m qtap_async.bpf.build

# Fail if the committed BPF objects are stale
bpf-check:
    {{venv}}python -m qtap_async.bpf.build --check

# Build qtap's Java agent jar from java/qtap-agent/src (commit it afterwards); java-check: fail if stale
java:
    {{venv}}python -m qtap_async.tls.java_build

java-check:
    {{venv}}python -m qtap_async.tls.java_build --check

lint:
    {{venv}}ruff check .

typecheck:
    {{venv}}mypy

native:
    {{venv}}python -m qtap_async.native_cli build

# The whole suite, as CI runs it (needs root; starts Kafka and MinIO)
test *ARGS:
    bash scripts/test {{ARGS}}

# Only the tests that load real BPF programs
test-bpf *ARGS:
    {{venv}}python -m pytest -m bpf {{ARGS}}

# Long property fuzzing of the parsers, rule language, config loader and Pulse decoder (CI runs a short
# profile of the same tests), then Schemathesis over Pulse's API
fuzz *ARGS:
    HYPOTHESIS_PROFILE=fuzz {{venv}}python -m pytest tests/fuzz tests/pulse/test_openapi.py -q -p no:randomly {{ARGS}}

# All benchmarks; each prints JSON and writes benchmarks/results/<name>.json
bench:
    for b in benchmarks/bench_*.py; do {{venv}}python "$b"; done

# Run the agent (local-only: events on stdout)
run *ARGS:
    {{venv}}qtap run {{ARGS}}

# Kafka + MinIO for the sink tests: up | down | status | reset | stop NAME | start NAME (NAME: kafka, minio)
services *ARGS:
    bash scripts/services {{ARGS}}
