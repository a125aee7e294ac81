"""The agent: configuration, listeners, and the services and checks it owns."""
