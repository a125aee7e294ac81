"""
The service that ``bench/checks.py`` points its HTTP checks at.

``python3 bench/checks_target.py PORT DOWN_DIR`` listens on 127.0.0.1:PORT.
``GET /h/<n>`` answers 200 ``ok``, or 500 ``down`` while the file
``DOWN_DIR/h<n>`` exists (the bench creates those files to make checks flap);
``GET /_count`` answers the number of ``/h/`` requests served so far, which is
the number of HTTP check runs the agent made. No access log.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site


class Target(Resource):
    isLeaf = True

    def __init__(self, down_dir: str) -> None:
        super().__init__()
        self.down_dir = down_dir
        self.served = 0

    def render_GET(self, request):
        path = request.path.decode("ascii", "replace")
        request.setHeader(b"content-type", b"text/plain")
        if path == "/_count":
            return str(self.served).encode()
        if not path.startswith("/h/"):
            request.setResponseCode(404)
            return b"no such check"
        self.served += 1
        if os.path.exists(os.path.join(self.down_dir, "h" + path[3:])):
            request.setResponseCode(500)
            return b"down"
        return b"ok"


class QuietSite(Site):
    def log(self, request):
        pass


def main() -> None:
    port, down_dir = int(sys.argv[1]), sys.argv[2]
    reactor.listenTCP(port, QuietSite(Target(down_dir)), interface="127.0.0.1", backlog=1024)
    reactor.run()


if __name__ == "__main__":
    main()
