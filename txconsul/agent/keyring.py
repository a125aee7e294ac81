# -*- test-case-name: txconsul.test.agent.test_gossip_agent -*-
"""
Keyring operations as Consul runs them: on every pool, through a server.

Any agent hands ``list``, ``install``, ``use`` and ``remove`` to a server
(``Internal.KeyringOperation`` over server RPC; a server runs it itself). That
server sends serf's key query to its WAN pool and its LAN pool, and passes the
operation on, marked ``Forwarded``, to a server of every other datacenter it
sees on the WAN pool, which runs it on its own LAN pool only. The answer is one
entry per pool, WAN first, in Consul's ``KeyringResponse`` shape with its
``Error`` (``""`` when every member answered with success); a datacenter that
cannot be reached gives an entry with the reason as its error.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.python.failure import Failure

from txconsul.errors import BadRequest, TxConsulError
from txconsul.gossip.keyring import KeyringError, decode_key, encode_key
from txconsul.gossip.serf import KeyResponse, MemberStatus

if TYPE_CHECKING:
    from txconsul.agent.agent import Agent
    from txconsul.agent.membership import SerfPool

OPERATIONS = ("list", "install", "use", "remove")

#: Consul's bound on ``relay-factor`` (``ParseRelayFactor``)
MAX_RELAY_FACTOR = 5
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")

#: what a server answers for each pool, and what the HTTP API shows (less ``Error``)
Entry = dict[str, Any]

_COUNTS = ("NumNodes", "NumResp", "NumErr")
_MAPS = ("Keys", "PrimaryKeys", "Messages")


def entry(datacenter: str, wan: bool, answer: KeyResponse | None, error: str = "") -> Entry:
    """One pool's summed-up answers; ``answer`` ``None`` for a datacenter not reached."""
    if answer is not None:
        error = answer.error() or ""
    return {
        "WAN": wan,
        "Datacenter": datacenter,
        "Segment": "",
        "Partition": "",
        "Keys": dict(answer.keys) if answer else {},
        "PrimaryKeys": dict(answer.primary_keys) if answer else {},
        "NumNodes": answer.num_nodes if answer else 0,
        "NumResp": answer.num_resp if answer else 0,
        "NumErr": answer.num_err if answer else 0,
        "Messages": dict(answer.messages) if answer else {},
        "Error": error,
    }


def local_entries(agent: Agent) -> list[Entry]:
    """This agent's own keys, pool by pool, asking nobody (``?local-only``)."""
    out = []
    for pool in agent.membership.keyrings():
        assert pool.keyring is not None
        keys = [encode_key(k) for k in pool.keyring.keys]
        answer = KeyResponse(1, 1, 0, {}, {k: 1 for k in keys}, {keys[0]: 1})
        out.append(entry(agent.config.datacenter, pool.wan, answer))
    return ordered(out)


def ordered(entries: list[Entry]) -> list[Entry]:
    """The WAN pool's entry first, as Consul lists them; the rest keep their order."""
    return sorted(entries, key=lambda e: not e["WAN"])


def parse_relay_factor(text: str | None) -> int:
    """``?relay-factor`` as Consul reads it: an integer from 0 to 5, 0 when absent."""
    if text is None or text == "":
        return 0
    if not _INTEGER.fullmatch(text):
        raise BadRequest(
            f"Error parsing relay factor: strconv.Atoi: parsing {json.dumps(text)}: invalid syntax"
        )
    n = int(text)
    if not 0 <= n <= MAX_RELAY_FACTOR:
        raise BadRequest(
            f"Invalid relay factor: Relay factor must be in range: [0, {MAX_RELAY_FACTOR}]"
        )
    return n


def operate(
    agent: Agent, op: str, key: bytes | None = None, relay_factor: int = 0
) -> Deferred[list[Entry]]:
    """Run ``op`` on every pool of every datacenter, through a server."""
    if agent.config.server:
        return ensureDeferred(run(agent, op, key, forwarded=False, relay_factor=relay_factor))
    body = _request(op, key, False, relay_factor)
    d: Deferred[Any] = agent.remote.call("Internal.KeyringOperation", body, idempotent=op == "list")
    return d.addCallback(entries_from_wire)


def handle_rpc(agent: Agent, body: Any) -> Deferred[list[Entry]]:
    """The server's ``Internal.KeyringOperation``."""
    if not isinstance(body, dict):
        raise BadRequest("Internal.KeyringOperation takes a map")
    op, text, forwarded = body.get("Operation"), body.get("Key", ""), body.get("Forwarded")
    relay_factor = body.get("RelayFactor", 0)
    if op not in OPERATIONS:
        raise BadRequest(f"unknown keyring operation {op!r}")
    if not isinstance(text, str) or not isinstance(forwarded, bool):
        raise BadRequest("Internal.KeyringOperation: Key must be a string and Forwarded a bool")
    if (
        not isinstance(relay_factor, int)
        or isinstance(relay_factor, bool)
        or not 0 <= relay_factor <= MAX_RELAY_FACTOR
    ):
        raise BadRequest(
            f"Internal.KeyringOperation: RelayFactor must be in range: [0, {MAX_RELAY_FACTOR}]"
        )
    key = None
    if op != "list":
        try:
            key = decode_key(text)
        except KeyringError as e:
            raise BadRequest(f"Invalid key: {e}") from None
    return ensureDeferred(run(agent, op, key, forwarded, relay_factor))


def _request(op: str, key: bytes | None, forwarded: bool, relay_factor: int) -> dict[str, Any]:
    """Consul's ``KeyringRequest`` as ``Internal.KeyringOperation`` takes it."""
    return {
        "Operation": op,
        "Key": encode_key(key) if key else "",
        "Forwarded": forwarded,
        "RelayFactor": relay_factor,
    }


async def run(
    agent: Agent, op: str, key: bytes | None, forwarded: bool, relay_factor: int = 0
) -> list[Entry]:
    """
    On a server: ``op`` on this server's pools (the LAN pool only when
    ``forwarded``), and on the LAN pools of the other datacenters.
    """
    membership = agent.membership
    dc = agent.config.datacenter
    lan_only = forwarded or membership.wan is None
    answers: list[tuple[SerfPool, KeyResponse]] = await membership.keyring_operation(
        op, key, lan_only=lan_only, relay_factor=relay_factor
    )
    out = ordered([entry(dc, pool.wan, answer) for pool, answer in answers])
    if not lan_only:
        others = other_datacenters(agent)
        forwards = [_forward(agent, o, op, key, relay_factor) for o in others]
        for found in await gatherResults(forwards):
            out += found  # each datacenter's LAN pool, by name
    return out


def other_datacenters(agent: Agent) -> list[str]:
    """The datacenters with an alive server in this server's WAN pool, ours left out."""
    pool = agent.membership.wan
    if pool is None:
        return []
    ours = agent.config.datacenter
    found = {
        m.tags.get("dc", "")
        for m in pool.serf.members.values()
        if m.status == MemberStatus.ALIVE and m.tags.get("role") == "consul"
    }
    return sorted(d for d in found if d and d != ours)


def _forward(
    agent: Agent, dc: str, op: str, key: bytes | None, relay_factor: int
) -> Deferred[list[Entry]]:
    body = _request(op, key, True, relay_factor)
    d: Deferred[Any] = agent.remote.call(
        "Internal.KeyringOperation", body, dc=dc, idempotent=op == "list"
    )

    def failed(f: Failure) -> list[Entry]:
        f.trap(TxConsulError)
        return [entry(dc, False, None, str(f.value) or f.value.__class__.__name__)]

    return d.addCallback(entries_from_wire).addErrback(failed)


def entries_from_wire(body: Any) -> list[Entry]:
    """A server's answer, checked: a list of entries of Consul's shape."""
    if not isinstance(body, list):
        raise BadRequest("Internal.KeyringOperation answered something other than a list")
    out = []
    for item in body:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("WAN"), bool)
            and isinstance(item.get("Datacenter"), str)
            and isinstance(item.get("Error"), str)
            and all(isinstance(item.get(k), int) for k in _COUNTS)
            and all(isinstance(item.get(k), dict) for k in _MAPS)
        ):
            raise BadRequest("Internal.KeyringOperation answered an entry of the wrong shape")
        out.append(item)
    return out


def failures(entries: list[Entry]) -> None:
    """Consul's error text (``keyringErrorsOrNil``) for every pool that did not succeed."""
    errors: list[str] = []
    for e in entries:
        if not e["Error"]:
            continue
        which = "WAN" if e["WAN"] else f"{e['Datacenter']} (LAN)"
        errors.append(f"{which} error: {e['Error']}")
        errors += [f"{node}: {message}" for node, message in sorted(e["Messages"].items())]
    if errors:
        noun = "error" if len(errors) == 1 else "errors"
        lines = "".join(f"\t* {e}\n" for e in errors)
        raise TxConsulError(f"{len(errors)} {noun} occurred:\n{lines}")


def public(entries: list[Entry]) -> list[Entry]:
    """The entries as ``GET /v1/operator/keyring`` shows them (no ``Error``)."""
    return [{k: v for k, v in e.items() if k != "Error"} for e in entries]
