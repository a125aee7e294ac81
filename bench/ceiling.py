"""
The framework's ceiling: a bare twisted.web resource with a fixed JSON answer.

``python3 bench/ceiling.py PORT BODY_SIZE`` listens on 127.0.0.1:PORT and
answers every GET with a JSON body of BODY_SIZE bytes and every PUT with
``true``, with no routing, no store and no access log. ``bench/kv.py`` runs it
beside the agent so that the agent's rates can be read against what
twisted.web alone does on the same machine at the same time.
"""

from __future__ import annotations

import json
import sys

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site


def fixed_body(size: int) -> bytes:
    """A JSON list shaped like a KV answer, padded to exactly ``size`` bytes."""
    entry = {"Key": "bench/key", "Value": ""}
    bare = len(json.dumps([entry]))
    entry["Value"] = "x" * max(0, size - bare)
    return json.dumps([entry]).encode()


class Fixed(Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        return self.body

    def render_PUT(self, request):
        request.content.read()
        request.setHeader(b"content-type", b"application/json")
        return b"true"


class QuietSite(Site):
    """No access log line per request, like the agent's own site."""

    def log(self, request):
        pass


def main() -> None:
    port, size = int(sys.argv[1]), int(sys.argv[2])
    reactor.listenTCP(port, QuietSite(Fixed(fixed_body(size))), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
