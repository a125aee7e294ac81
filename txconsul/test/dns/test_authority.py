# -*- test-case-name: txconsul.test.dns.test_authority -*-
"""The consul domain's answers, straight from a catalog: no packets, no sockets."""

from __future__ import annotations

from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase

from txconsul.test.dns.helpers import NOW, World


def addresses(answer) -> list[str]:
    return [rr.payload.dottedQuad() for rr in answer.answers if rr.type == dns.A]


def redis(world: World, n: int = 3, **service) -> None:
    for i in range(n):
        world.register(
            f"node{i}",
            f"10.0.0.{i + 1}",
            {
                "ID": "redis",
                "Service": "redis",
                "Tags": ["slave"] if i else ["master"],
                "Port": 8000 + i,
                **service,
            },
        )


class NodeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World()
        self.world.register("web1", "10.0.0.7", NodeMeta={"rack": "r1", "a=b": "c"})
        self.world.register("web6", "2001:db8::6")

    def test_node_a_record(self) -> None:
        answer = self.world.lookup("web1.node.consul")
        self.assertEqual(answer.rcode, dns.OK)
        self.assertEqual(addresses(answer), ["10.0.0.7"])
        self.assertEqual(answer.answers[0].name.name, b"web1.node.consul")
        self.assertTrue(answer.answers[0].auth)

    def test_node_in_own_datacenter_and_any_case(self) -> None:
        self.assertEqual(addresses(self.world.lookup("WEB1.node.DC1.consul")), ["10.0.0.7"])

    def test_other_datacenter_is_nxdomain(self) -> None:
        self.assertEqual(self.world.lookup("web1.node.dc2.consul").rcode, dns.ENAME)

    def test_unknown_node_is_nxdomain_with_soa(self) -> None:
        answer = self.world.lookup("nosuch.node.consul")
        self.assertEqual(answer.rcode, dns.ENAME)
        self.assertEqual(answer.answers, [])
        [soa] = answer.authority
        self.assertEqual(soa.type, dns.SOA)
        self.assertEqual(soa.name.name, b"consul")
        self.assertEqual(soa.payload.mname.name, b"ns.consul")
        self.assertEqual(soa.payload.rname.name, b"hostmaster.consul")
        self.assertEqual(soa.payload.serial, NOW)
        self.assertEqual(
            (soa.payload.refresh, soa.payload.retry, soa.payload.expire, soa.payload.minimum),
            (3600, 600, 86400, 0),
        )

    def test_aaaa_of_ipv4_node_is_empty_noerror_with_soa(self) -> None:
        answer = self.world.lookup("web1.node.consul", dns.AAAA)
        self.assertEqual(answer.rcode, dns.OK)
        self.assertEqual(answer.answers, [])
        self.assertEqual([rr.type for rr in answer.authority], [dns.SOA])

    def test_aaaa_node(self) -> None:
        [rr] = self.world.lookup("web6.node.consul", dns.AAAA).answers
        self.assertEqual(rr.payload._address, dns.Record_AAAA("2001:db8::6")._address)

    def test_txt_and_any_carry_node_meta(self) -> None:
        txt = self.world.lookup("web1.node.consul", dns.TXT)
        self.assertEqual([rr.payload.data for rr in txt.answers], [[b"a`=b=c"], [b"rack=r1"]])
        any_ = self.world.lookup("web1.node.consul", dns.ALL_RECORDS)
        self.assertEqual([rr.type for rr in any_.answers], [dns.A, dns.TXT, dns.TXT])

    def test_node_ttl_from_config(self) -> None:
        world = World(dns_config={"node_ttl": "30s"})
        world.register("web1", "10.0.0.7")
        [rr] = world.lookup("web1.node.consul").answers
        self.assertEqual(rr.ttl, 30)

    def test_host_name_address_is_a_cname(self) -> None:
        self.world.register("ext", "db.example.com")
        [rr] = self.world.lookup("ext.node.consul").answers
        self.assertEqual(rr.type, dns.CNAME)
        self.assertEqual(rr.payload.name.name, b"db.example.com")


class ServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World()
        redis(self.world)

    def test_service_a_records_of_every_instance(self) -> None:
        answer = self.world.lookup("redis.service.consul")
        self.assertEqual(sorted(addresses(answer)), ["10.0.0.1", "10.0.0.2", "10.0.0.3"])

    def test_tag_filters_instances(self) -> None:
        answer = self.world.lookup("slave.redis.service.consul")
        self.assertEqual(sorted(addresses(answer)), ["10.0.0.2", "10.0.0.3"])
        answer = self.world.lookup("_redis._master.service.consul", dns.SRV)
        self.assertEqual([rr.payload.port for rr in answer.answers], [8000])

    def test_unknown_service_or_tag_is_nxdomain_with_soa(self) -> None:
        for name in ("nosuch.service.consul", "nosuch.redis.service.consul"):
            answer = self.world.lookup(name)
            self.assertEqual(answer.rcode, dns.ENAME)
            self.assertEqual([rr.type for rr in answer.authority], [dns.SOA])

    def test_service_name_matches_without_case(self) -> None:
        self.assertEqual(len(self.world.lookup("REDIS.service.consul").answers), 3)

    def test_srv_has_port_node_target_and_address_in_additional(self) -> None:
        answer = self.world.lookup("slave.redis.service.consul", dns.SRV)
        got = sorted((rr.payload.port, rr.payload.target.name) for rr in answer.answers)
        self.assertEqual(got, [(8001, b"node1.node.dc1.consul"), (8002, b"node2.node.dc1.consul")])
        for rr in answer.answers:
            self.assertEqual((rr.payload.priority, rr.payload.weight), (1, 1))
        extra = sorted((rr.name.name, rr.payload.dottedQuad()) for rr in answer.additional)
        self.assertEqual(
            extra, [(b"node1.node.dc1.consul", "10.0.0.2"), (b"node2.node.dc1.consul", "10.0.0.3")]
        )

    def test_srv_of_service_with_own_address_targets_addr_name(self) -> None:
        world = World()
        world.register("n", "10.0.0.1", {"Service": "web", "Address": "10.0.5.7", "Port": 80})
        answer = world.lookup("web.service.consul", dns.SRV)
        [srv] = answer.answers
        self.assertEqual(srv.payload.target.name, b"0a000507.addr.dc1.consul")
        [extra] = answer.additional
        self.assertEqual(extra.payload.dottedQuad(), "10.0.5.7")
        self.assertEqual(addresses(world.lookup("0a000507.addr.dc1.consul")), ["10.0.5.7"])
        self.assertEqual(addresses(world.lookup("web.service.consul")), ["10.0.5.7"])

    def test_critical_instances_are_left_out_warning_kept(self) -> None:
        self.world.check("node0", "c1", "critical", "redis")
        self.world.check("node1", "w1", "warning")
        answer = self.world.lookup("redis.service.consul")
        self.assertEqual(sorted(addresses(answer)), ["10.0.0.2", "10.0.0.3"])

    def test_only_passing_leaves_out_warning_too(self) -> None:
        world = World(dns_config={"only_passing": True})
        redis(world)
        world.check("node1", "w1", "warning", "redis")
        self.assertEqual(
            sorted(addresses(world.lookup("redis.service.consul"))), ["10.0.0.1", "10.0.0.3"]
        )

    def test_all_critical_is_nxdomain(self) -> None:
        for i in range(3):
            self.world.check(f"node{i}", "serfHealth", "critical")
        self.assertEqual(self.world.lookup("redis.service.consul").rcode, dns.ENAME)

    def test_srv_weight_follows_health(self) -> None:
        world = World()
        redis(world, 1, Weights={"Passing": 10, "Warning": 2})
        self.assertEqual(
            world.lookup("redis.service.consul", dns.SRV).answers[0].payload.weight, 10
        )
        world.check("node0", "w", "warning", "redis")
        self.assertEqual(world.lookup("redis.service.consul", dns.SRV).answers[0].payload.weight, 2)

    def test_order_is_random_on_every_query(self) -> None:
        orders = {tuple(addresses(self.world.lookup("redis.service.consul"))) for _ in range(60)}
        self.assertEqual(len(orders), 6)

    def test_service_ttl_by_name_prefix_and_default(self) -> None:
        world = World(dns_config={"service_ttl": {"*": "5s", "red*": "7s", "web": "9s"}})
        redis(world, 1)
        world.register("n9", "10.0.0.9", {"Service": "web", "Port": 1})
        world.register("n8", "10.0.0.8", {"Service": "db", "Port": 1})
        ttl = {
            name: world.lookup(f"{name}.service.consul").answers[0].ttl
            for name in ("redis", "web", "db")
        }
        self.assertEqual(ttl, {"redis": 7, "web": 9, "db": 5})

    def test_other_types_are_empty_noerror_with_soa(self) -> None:
        answer = self.world.lookup("redis.service.consul", dns.MX)
        self.assertEqual((answer.rcode, answer.answers), (dns.OK, []))
        self.assertEqual([rr.type for rr in answer.authority], [dns.SOA])

    def test_duplicate_addresses_collapse(self) -> None:
        world = World()
        world.register("n", "10.0.0.1", {"ID": "a", "Service": "web", "Port": 1})
        world.register("n", "10.0.0.1", {"ID": "b", "Service": "web", "Port": 2})
        self.assertEqual(addresses(world.lookup("web.service.consul")), ["10.0.0.1"])
        self.assertEqual(len(world.lookup("web.service.consul", dns.SRV).answers), 2)


class DomainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World()
        self.world.register("srv1", "10.0.0.1", {"Service": "consul", "Port": 8300})

    def test_soa_of_the_domain(self) -> None:
        [soa] = self.world.lookup("consul", dns.SOA).answers
        self.assertEqual(soa.type, dns.SOA)

    def test_ns_names_the_servers_with_glue(self) -> None:
        answer = self.world.lookup("consul", dns.NS)
        self.assertEqual([rr.payload.name.name for rr in answer.answers], [b"srv1.node.dc1.consul"])
        self.assertEqual([rr.payload.dottedQuad() for rr in answer.additional], ["10.0.0.1"])

    def test_ptr_of_known_node_and_service_address(self) -> None:
        self.world.register("n2", "10.0.0.2", {"Service": "web", "Address": "10.9.0.1", "Port": 1})
        [ptr] = self.world.lookup("1.0.0.10.in-addr.arpa", dns.PTR).answers
        self.assertEqual(ptr.payload.name.name, b"srv1.node.dc1.consul")
        [ptr] = self.world.lookup("1.0.9.10.in-addr.arpa", dns.PTR).answers
        self.assertEqual(ptr.payload.name.name, b"web.service.dc1.consul")

    def test_ptr_of_unknown_address_is_nxdomain_or_recursion(self) -> None:
        answer = self.world.lookup("9.9.9.9.in-addr.arpa", dns.PTR)
        self.assertEqual(answer.rcode, dns.ENAME)
        self.assertTrue(answer.recurse)

    def test_outside_the_domain_is_refused_unless_recursed(self) -> None:
        answer = self.world.lookup("example.com")
        self.assertEqual(answer.rcode, dns.EREFUSED)
        self.assertTrue(answer.recurse)
        self.assertFalse(answer.authoritative)

    def test_configured_domain(self) -> None:
        world = World(domain="example.org")
        world.register("web1", "10.0.0.7")
        self.assertEqual(addresses(world.lookup("web1.node.example.org")), ["10.0.0.7"])
        self.assertEqual(world.lookup("web1.node.consul").rcode, dns.EREFUSED)

    def test_without_stale_reads_a_follower_fails(self) -> None:
        world = World(leader=False, dns_config={"allow_stale": False})
        world.register("web1", "10.0.0.7")
        self.assertEqual(world.lookup("web1.node.consul").rcode, dns.ESERVER)
        stale = World(leader=False)
        stale.register("web1", "10.0.0.7")
        self.assertEqual(stale.lookup("web1.node.consul").rcode, dns.OK)


class CacheTests(SynchronousTestCase):
    def test_a_catalog_change_is_seen_at_once(self) -> None:
        world = World()
        redis(world)
        self.assertEqual(len(world.lookup("redis.service.consul").answers), 3)
        world.check("node0", "c", "critical", "redis")
        self.assertEqual(len(world.lookup("redis.service.consul").answers), 2)
        world.register("node9", "10.0.0.9", {"ID": "redis", "Service": "redis", "Port": 1})
        self.assertEqual(len(world.lookup("redis.service.consul").answers), 3)

    def test_a_restored_catalog_is_seen_at_once(self) -> None:
        world = World()
        redis(world)
        blob = world.store.snapshot()
        self.assertEqual(len(world.lookup("redis.service.consul").answers), 3)
        world.store.catalog.delete_node(world.index + 1, "node0")
        world.store.restore(blob)
        world.store.catalog.delete_node(world.index + 1, "node1")
        self.assertEqual(len(world.lookup("redis.service.consul").answers), 2)

    def test_cached_negative_answers_carry_a_current_soa(self) -> None:
        world = World()
        first = world.lookup("nosuch.node.consul").authority[0].payload.serial
        world.clock.advance(5)
        second = world.lookup("nosuch.node.consul").authority[0].payload.serial
        self.assertEqual(second - first, 5)
