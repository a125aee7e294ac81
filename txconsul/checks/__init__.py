"""Check runners: script, HTTP and TCP checks, run where the service runs."""
