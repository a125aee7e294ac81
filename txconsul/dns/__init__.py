"""
The DNS interface: the ``consul`` domain answered from the catalog.

``query`` turns names into lookups, ``authority`` turns lookups into records,
``server`` owns the UDP and TCP ports and the wire format.
"""
