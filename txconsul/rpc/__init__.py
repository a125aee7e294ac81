"""
Server RPC and Raft on port 8300: framing, per-connection protocols, the
listener service and the forwarding policy (client -> server -> leader).
"""
