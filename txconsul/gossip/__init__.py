"""
Gossip: memberlist (SWIM with Lifeguard) and serf, wire-compatible with serf 0.9.4.

Pure cores (``memberlist``, ``serf``) and the wire formats (``wire``,
``messages``) import nothing from Twisted; ``adapter`` and ``pool`` put them on
real sockets.
"""
