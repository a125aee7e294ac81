# -*- test-case-name: txconsul.test.dns.test_query -*-
"""Names of the consul domain parsed into lookups, without a catalog."""

from twisted.trial.unittest import SynchronousTestCase

from txconsul.dns.query import (
    AddrLookup,
    Apex,
    NodeLookup,
    Outside,
    ReverseLookup,
    ServiceLookup,
    Unknown,
    address_label,
    hex_address,
    parse_name,
)


def parse(name: str, domain: str = "consul"):
    return parse_name(name, domain)


class NameTests(SynchronousTestCase):
    def test_node_with_and_without_datacenter(self) -> None:
        self.assertEqual(parse("web1.node.consul."), NodeLookup("web1", None))
        self.assertEqual(parse("web1.node.DC1.consul"), NodeLookup("web1", "dc1"))

    def test_node_names_may_hold_dots(self) -> None:
        self.assertEqual(parse("a.b.node.consul."), NodeLookup("a.b", None))

    def test_keywords_ignore_case_and_names_keep_it(self) -> None:
        self.assertEqual(parse("Web1.NODE.Consul."), NodeLookup("Web1", None))

    def test_service_tag_and_datacenter(self) -> None:
        self.assertEqual(parse("redis.service.consul."), ServiceLookup("redis", None, None))
        self.assertEqual(
            parse("slave.redis.service.dc2.consul."), ServiceLookup("redis", "slave", "dc2")
        )

    def test_rfc2782_form(self) -> None:
        self.assertEqual(
            parse("_redis._slave.service.consul."), ServiceLookup("redis", "slave", None)
        )
        self.assertEqual(parse("_redis._tcp.service.consul."), ServiceLookup("redis", None, None))
        self.assertEqual(parse("_redis._TCP.service.consul."), ServiceLookup("redis", None, None))

    def test_rfc2782_form_may_leave_out_service(self) -> None:
        self.assertEqual(parse("_redis._tcp.consul."), ServiceLookup("redis", None, None))
        self.assertEqual(parse("_redis._tcp.dc1.consul."), ServiceLookup("redis", None, "dc1"))

    def test_addr_form(self) -> None:
        self.assertEqual(parse("0a000001.addr.dc1.consul."), AddrLookup("10.0.0.1", "dc1"))
        self.assertIsInstance(parse("0a00001.addr.consul."), Unknown)
        self.assertIsInstance(parse("0a00000g.addr.consul."), Unknown)
        self.assertIsInstance(parse("0a 00 01.addr.consul."), Unknown)

    def test_hex_round_trip(self) -> None:
        for address in ("10.0.0.1", "::1", "2001:db8::5"):
            self.assertEqual(hex_address(address_label(address)), address)

    def test_apex_and_outside(self) -> None:
        self.assertEqual(parse("consul."), Apex())
        self.assertEqual(parse("CONSUL"), Apex())
        self.assertEqual(parse("example.com."), Outside())
        self.assertEqual(parse("notconsul."), Outside())
        self.assertEqual(parse("."), Outside())

    def test_other_domain(self) -> None:
        self.assertEqual(parse("web.node.example.org.", "example.org"), NodeLookup("web", None))
        self.assertEqual(parse("web.node.consul.", "example.org"), Outside())

    def test_reverse_names(self) -> None:
        self.assertEqual(parse("4.3.2.1.in-addr.arpa."), ReverseLookup("1.2.3.4"))
        self.assertEqual(parse("4.3.2.010.in-addr.arpa."), ReverseLookup("10.2.3.4"))
        v6 = ".".join(reversed("20010db8000000000000000000000005")) + ".ip6.arpa."
        self.assertEqual(parse(v6), ReverseLookup("2001:db8::5"))

    def test_partial_or_bad_reverse_names_are_not_ours(self) -> None:
        for name in (
            "3.2.1.in-addr.arpa.",
            "256.3.2.1.in-addr.arpa.",
            "x.3.2.1.in-addr.arpa.",
            "\u00b2.3.2.1.in-addr.arpa.",
            "1.ip6.arpa.",
        ):
            self.assertEqual(parse(name), Outside(), name)

    def test_names_that_name_nothing(self) -> None:
        for name in (
            "node.consul.",
            "service.consul.",
            "web.consul.",
            "a.b.node.dc1.extra.consul.",
            "x.query.consul.",
            "web.connect.consul.",
            "_._.service.consul.",
        ):
            self.assertIsInstance(parse(name), Unknown, name)

    def test_tags_may_hold_dots(self) -> None:
        self.assertEqual(parse("v1.2.web.service.consul."), ServiceLookup("web", "v1.2", None))
