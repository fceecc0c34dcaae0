"""The graph of a run and the loop that runs it (see graph.py for the picture).

- ``graph``: ``Graph``, the stages built from a ``Config`` (the default config without a file), and
  ``AgentOptions``, the run's settings that are not in the config (capture, queues, status address);
- ``stage``: ``TrackingStage``, decode -> conntrack -> enrich -> dispatch on each raw batch;
- ``dispatch``: ``Pipeline`` (the compiled config) and ``Dispatch`` (filters, stacks, local output);
- ``writer``: ``Writer`` (stores, or the local output ``StdoutWriter``), ``build_stores``;
- ``runtime``: ``Agent``, the run loop (status server, sources, stages, writer, reloads).
"""

from qtap_async.topology.dispatch import Dispatch, Pipeline
from qtap_async.topology.graph import AgentOptions, Graph
from qtap_async.topology.runtime import Agent, ConfigReloader, run_agent
from qtap_async.topology.stage import TrackingStage
from qtap_async.topology.writer import StdoutWriter, Writer, build_stores

__all__ = [
    "Agent",
    "AgentOptions",
    "ConfigReloader",
    "Dispatch",
    "Graph",
    "Pipeline",
    "StdoutWriter",
    "TrackingStage",
    "Writer",
    "build_stores",
    "run_agent",
]
