"""
The ``txconsul`` command: Consul's CLI as a thin HTTP client of the local agent.

``txconsul.cli.main`` is the composition root; each verb family (``kv``,
``catalog``, ``members``, ``agent``) lives in its own module.
"""
