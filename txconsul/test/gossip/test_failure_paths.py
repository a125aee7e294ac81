"""
Failure paths of txconsul.gossip over real loopback sockets: serf's reconnect
to a failed member, and memberlist's TCP fallback ping for a member whose
UDP is lost. Pools run in this process, on 127.0.0.1 with port 0, at
shortened timings.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import attrs
from twisted.internet import reactor  # noqa: TID251 (real-socket test)
from twisted.trial.unittest import TestCase

from txconsul.gossip.adapter import GossipNode, GossipPool
from txconsul.gossip.memberlist import GossipConfig
from txconsul.gossip.serf import MemberStatus, Serf, SerfConfig
from txconsul.gossip.states import MemberState
from txconsul.test.gossip.test_adapter import FAST
from txconsul.testing.polling import poll_until


class FailurePathTests(TestCase):
    timeout = 60

    def start_pool(self, name: str, config: GossipConfig, serf: Serf | None = None) -> GossipPool:
        pool = GossipPool(
            reactor, time.monotonic, name, config=config, rng=random.Random(name), delegate=serf
        )
        pool.startService()
        self.addCleanup(lambda: pool.stopService() if pool.running else None)
        return pool

    async def wait_for(self, condition: Callable[[], bool], limit: float = 15.0) -> None:
        if not await poll_until(reactor, condition, limit):
            self.fail("condition not met in time")

    def node(self, pool: GossipPool) -> GossipNode:
        assert pool.node is not None
        return pool.node

    async def test_a_failed_member_comes_back_through_the_others_reconnect(self) -> None:
        """
        serf's reconnect over real sockets. ``c`` is cut off (its listeners
        closed, its timer stopped) until ``a`` and ``b`` have marked it failed
        and, past GossipToTheDeadTime, dropped it from memberlist's table, so
        that they no longer probe or gossip to it. Periodic push/pull is off
        in this pool and ``c`` never calls join: the only way back is a
        reconnect, a joining push/pull that ``a`` or ``b`` makes every
        ``reconnect_interval`` with probability failed/alive.
        """
        config = attrs.evolve(FAST, push_pull_interval=0.0, gossip_to_the_dead_time=1.0)
        serf_config = SerfConfig(reap_interval=1.0, reconnect_interval=0.3, reconnect_timeout=600.0)
        serfs = {n: Serf(n, {"role": n}, config=serf_config, rng=random.Random(n)) for n in "abc"}
        a, b, c = (self.start_pool(n, config, serfs[n]) for n in "abc")
        for pool in (b, c):
            self.assertEqual(await pool.join([a.address()]), 1)

        def status_everywhere(name: str, status: MemberStatus, pools: list[GossipPool]) -> bool:
            return all(
                serfs[p.node_name].members.get(name) is not None
                and serfs[p.node_name].members[name].status == status
                for p in pools
            )

        await self.wait_for(
            lambda: all(status_everywhere(n, MemberStatus.ALIVE, [a, b, c]) for n in "abc")
        )
        address = c.address()
        await c.suspend()
        await self.wait_for(lambda: status_everywhere("c", MemberStatus.FAILED, [a, b]))
        # past GossipToTheDeadTime: memberlist forgot c, nobody probes or gossips to it
        await self.wait_for(lambda: "c" not in a.core.nodes and "c" not in b.core.nodes)
        # attempts were made while c was away, and refused
        await self.wait_for(
            lambda: self.node(a).reconnects_tried + self.node(b).reconnects_tried >= 2
        )
        self.assertEqual(self.node(a).reconnects_answered + self.node(b).reconnects_answered, 0)
        self.assertEqual(serfs["a"].members["c"].address, address)

        c.resume()
        self.assertEqual(c.address(), address)
        await self.wait_for(lambda: status_everywhere("c", MemberStatus.ALIVE, [a, b]))
        self.assertGreaterEqual(
            self.node(a).reconnects_answered + self.node(b).reconnects_answered, 1
        )
        self.assertEqual(self.node(c).reconnects_tried, 0)  # c saw nobody fail

    #: a TCP ping has from the probe timeout to the end of the probe interval
    #: (0.7 s here) to be answered: room for a loaded machine
    TCP_PING = attrs.evolve(FAST, probe_interval=1.0, probe_timeout=0.3, push_pull_interval=0.0)

    async def start_trio(self, config: GossipConfig) -> list[GossipPool]:
        pools = [self.start_pool(n, config) for n in ("x", "y", "z")]
        for pool in pools[1:]:
            self.assertEqual(await pool.join([pools[0].address()]), 1)
        names = {"x", "y", "z"}
        await self.wait_for(
            lambda: all(
                {n.name for n in p.members() if n.state == MemberState.ALIVE} == names
                for p in pools
            )
        )
        return pools

    async def test_a_member_without_udp_stays_alive_through_tcp_pings(self) -> None:
        """
        memberlist's TCP fallback over real sockets: ``z`` stops reading its
        UDP socket (datagrams to it are never read; its own still go out)
        while its TCP listener answers. Direct and indirect UDP probes of ``z``
        fail; the TCP ping sent at the probe timeout is answered, so ``x`` and
        ``y`` never suspect it.
        """
        x, y, z = await self.start_trio(self.TCP_PING)
        z.stop_reading_udp()
        self.addCleanup(z.start_reading_udp)
        before = {p.node_name: self.node(p).stream_pings_acked for p in (x, y)}
        suspected = []

        def watch() -> bool:
            for p in (x, y):
                if p.core.nodes["z"].state != MemberState.ALIVE:
                    suspected.append((p.node_name, p.core.nodes["z"].state))
            return all(self.node(p).stream_pings_acked - before[p.node_name] >= 3 for p in (x, y))

        await self.wait_for(watch, limit=30)
        self.assertEqual(suspected, [])
        for p in (x, y):
            self.assertGreaterEqual(self.node(p).stream_pings_sent, self.node(p).stream_pings_acked)

    async def test_without_tcp_pings_a_member_without_udp_is_declared_dead(self) -> None:
        """The control for the test above: the same cut with TCP pings off kills ``z``."""
        x, y, z = await self.start_trio(attrs.evolve(self.TCP_PING, disable_tcp_pings=True))
        z.stop_reading_udp()
        self.addCleanup(z.start_reading_udp)
        await self.wait_for(
            lambda: all(p.core.nodes["z"].state == MemberState.DEAD for p in (x, y))
        )
        self.assertEqual(self.node(x).stream_pings_sent + self.node(y).stream_pings_sent, 0)
