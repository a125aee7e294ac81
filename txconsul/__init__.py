"""txconsul: a Consul-compatible datacenter control plane on Twisted."""

__version__ = "0.1.0"

# The Consul version whose HTTP API we follow; reported by /v1/agent/self.
CONSUL_VERSION = "1.17.0"
