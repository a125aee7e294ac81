# -*- test-case-name: txconsul.test.dns.test_config -*-
"""``dns_config``, ``recursors`` and ``domain`` as the config loader checks them."""

from twisted.trial.unittest import SynchronousTestCase

from txconsul.config import load
from txconsul.dns.config import DNSConfig
from txconsul.errors import ConfigError


def config(**flags):
    return load({"dev": True, "node_name": "n1", **flags})


class DNSConfigTests(SynchronousTestCase):
    def test_defaults_are_consuls(self) -> None:
        self.assertEqual(config().dns, DNSConfig())
        self.assertEqual(
            (DNSConfig().allow_stale, DNSConfig().udp_answer_limit, DNSConfig().node_ttl),
            (True, 3, 0.0),
        )

    def test_keys_are_read(self) -> None:
        dns = config(
            dns_config={
                "allow_stale": False,
                "node_ttl": "10s",
                "service_ttl": {"*": "5s", "web": 3_000_000_000},
                "only_passing": True,
                "enable_truncate": True,
                "udp_answer_limit": 5,
                "max_stale": "87600h",
            }
        ).dns
        self.assertEqual(
            dns,
            DNSConfig(False, 10.0, {"*": 5.0, "web": 3.0}, True, True, 5, 2.0),
        )

    def test_bad_values_name_the_key(self) -> None:
        for bad, key in (
            ({"node_ttl": "ten"}, "node_ttl"),
            ({"node_ttl": "-1s"}, "node_ttl"),
            ({"only_passing": "yes"}, "only_passing"),
            ({"udp_answer_limit": 0}, "udp_answer_limit"),
            ({"udp_answer_limit": True}, "udp_answer_limit"),
            ({"service_ttl": []}, "service_ttl"),
        ):
            e = self.assertRaises(ConfigError, config, dns_config=bad)
            self.assertIn(key, str(e))
        self.assertRaises(ConfigError, config, dns_config=[])

    def test_recursors_must_be_ip_and_port(self) -> None:
        self.assertEqual(
            config(recursors=["8.8.8.8", "127.0.0.1:5353", "[::1]:53"]).recursors,
            ("8.8.8.8", "127.0.0.1:5353", "[::1]:53"),
        )
        for bad in ("dns.example.com", "1.2.3.4:x", "1.2.3.4:70000", "[::1", ""):
            self.assertRaises(ConfigError, config, recursors=[bad])

    def test_domain_is_checked_and_normalised(self) -> None:
        self.assertEqual(config(domain="Example.ORG").domain, "example.org.")
        for bad in ("", ".", "a..b", "bad domain", "-x.org"):
            self.assertRaises(ConfigError, config, domain=bad)
