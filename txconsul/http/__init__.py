"""The Consul HTTP API, one module per endpoint family, mounted by ``app``."""
