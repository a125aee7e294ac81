# -*- test-case-name: txconsul.test.test_config -*-
"""
Config files and ``twistd`` options that cannot be used: the agent refuses to
start with a ``ConfigError`` (a ``UsageError`` from twistd's option parser)
that names the file and the problem.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from txconsul.config import AgentConfig, load
from txconsul.errors import ConfigError
from txconsul.tap import Options

DEV = {"dev": True, "node_name": "node1"}
KEY_16 = "pUDWwCKA0AR5ksQe6JQfDg=="


class ConfigFiles(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def write(self, name: str, content: str | bytes | dict[str, Any]) -> str:
        path = os.path.join(self.dir, name)
        if isinstance(content, dict):
            content = json.dumps(content)
        with open(path, "wb") as f:
            f.write(content if isinstance(content, bytes) else content.encode())
        return path

    def assertRefused(self, content: str | bytes | dict[str, Any], *problem: str) -> str:
        """Loading a file holding ``content`` fails, naming the file and each of ``problem``."""
        path = self.write("agent.json", content)
        error = self.assertRaises(ConfigError, load, DEV, [path])
        self.assertIn(path, str(error))
        for words in problem:
            self.assertIn(words, str(error))
        return str(error)


class UnparsableFiles(ConfigFiles):
    def test_malformed_json(self) -> None:
        for content in ('{"server": true', "{'server': true}", '{"a": 1,}', "", "\x00"):
            self.assertRefused(content, "not valid JSON")

    def test_not_utf8(self) -> None:
        self.assertRefused(b'{"node_name": "\xff"}', "not valid JSON")

    def test_numbers_go_would_refuse(self) -> None:
        for content in (
            '{"bootstrap_expect": NaN}',
            '{"ports": {"http": Infinity}}',
            '{"kv_max_value_size": 1e999}',
            '{"bootstrap_expect": %d}' % 2**64,
        ):
            self.assertRefused(content, "not valid JSON")

    def test_nested_too_deeply(self) -> None:
        self.assertRefused("[" * 100_000, "not valid JSON")

    def test_top_level_not_an_object(self) -> None:
        for content in ("[]", "5", '"server"', "null"):
            self.assertRefused(content, "top level must be a JSON object")

    def test_file_in_config_dir_is_named(self) -> None:
        self.write("a.json", {"datacenter": "east"})
        bad = self.write("b.json", '{"server": tru}')
        self.write("c.json", {"node_meta": {"rack": "r1"}})
        error = self.assertRaises(ConfigError, load, DEV, [], [self.dir])
        self.assertIn(bad, str(error))
        self.assertIn("not valid JSON", str(error))

    def test_hcl_is_refused_by_name(self) -> None:
        hcl = self.write("agent.hcl", "server = true\n")
        error = self.assertRaises(ConfigError, load, DEV, [], [self.dir])
        self.assertIn(hcl, str(error))

    def test_missing_file_and_directory(self) -> None:
        missing = os.path.join(self.dir, "nope.json")
        self.assertIn(missing, str(self.assertRaises(ConfigError, load, DEV, [missing])))
        self.assertIn(missing, str(self.assertRaises(ConfigError, load, DEV, [], [missing])))

    def test_directory_given_as_file(self) -> None:
        self.assertIn(self.dir, str(self.assertRaises(ConfigError, load, DEV, [self.dir])))


class WrongTypes(ConfigFiles):
    def test_scalars_of_the_wrong_type(self) -> None:
        for key, value in (
            ("server", "yes"),
            ("server", 1),
            ("datacenter", 5),
            ("node_name", ["n"]),
            ("bind_addr", 127),
            ("client_addr", True),
            ("ports", [8500]),
            ("ports", "8500"),
            ("bootstrap_expect", "3"),
            ("bootstrap_expect", True),
            ("bootstrap", "true"),
            ("bootstrap", 1),
            ("encrypt", 16),
            ("ui", "yes"),
            ("log_level", 3),
            ("node_meta", "rack=r1"),
            ("node_meta", {"rack": 1}),
            ("kv_max_value_size", "512KiB"),
            ("raft_snapshot_threshold", "100"),
            ("raft_snapshot_threshold", True),
            ("raft_snapshot_threshold", 0),
            ("raft_trailing_logs", -1),
            ("raft_trailing_logs", 1.5),
            ("data_dir", 5),
        ):
            self.assertRefused({key: value}, key)

    def test_lists_of_the_wrong_type(self) -> None:
        for key, value in (
            ("start_join", "10.0.0.1"),
            ("start_join", None),
            ("retry_join", 5),
            ("recursors", {"a": "8.8.8.8"}),
            ("services", {"name": "web"}),
            ("checks", None),
            ("start_join", [5]),
            ("retry_join", [""]),
            ("retry_join_wan", "10.0.0.1"),
            ("retry_join_wan", [5]),
        ):
            self.assertRefused({key: value}, "join" if key.endswith("join") else key)

    def test_checks_of_the_wrong_type_beside_check(self) -> None:
        self.assertRefused(
            '{"checks": null, "check": {"name": "c", "ttl": "10s"}}', "checks must be a list"
        )
        self.assertRefused(
            '{"check": {"name": "c", "ttl": "10s"}, "checks": 5}', "checks must be a list"
        )

    def test_bad_values(self) -> None:
        for doc, problem in (
            ({"datacenter": "dc 1"}, "datacenter"),
            ({"node_name": "no spaces"}, "node_name"),
            ({"bind_addr": "not-an-ip"}, "not an IP address"),
            ({"advertise_addr": "10.0.0.300"}, "not an IP address"),
            ({"advertise_addr_wan": "wan.example"}, "not an IP address"),
            ({"advertise_addr": "0.0.0.0"}, "advertise_addr cannot be 0.0.0.0"),
            ({"advertise_addr_wan": "::"}, "advertise_addr_wan cannot be ::"),
            ({"log_level": "loud"}, "unknown log_level"),
            ({"bootstrap_expect": -1}, "must not be negative"),
            ({"server": False, "bootstrap_expect": 3, "dev": False, "data_dir": "/d"}, "server"),
            ({"start_join": ["10.0.0.1:port"]}, "bad port"),
        ):
            self.assertRefused(doc, problem)

    def test_data_dir_required_without_dev(self) -> None:
        error = self.assertRaises(ConfigError, load, {"node_name": "node1"})
        self.assertIn("data_dir", str(error))


class BootstrapModes(ConfigFiles):
    SERVER = {"node_name": "node1", "server": True, "data_dir": "/d"}

    def test_bootstrap_makes_a_server_that_elects_itself(self) -> None:
        config = load({**self.SERVER, "bootstrap": True})
        self.assertEqual((config.bootstrap, config.bootstrap_expect), (True, 0))
        self.assertFalse(load(self.SERVER).bootstrap)

    def test_dev_is_bootstrap_mode_and_ignores_bootstrap_expect(self) -> None:
        self.assertTrue(load(DEV).bootstrap)
        config = load({**DEV, "bootstrap_expect": 3})
        self.assertEqual((config.bootstrap, config.bootstrap_expect), (True, 0))

    def test_bootstrap_expect_of_one_is_bootstrap_mode(self) -> None:
        config = load({**self.SERVER, "bootstrap_expect": 1})
        self.assertEqual((config.bootstrap, config.bootstrap_expect), (True, 0))

    def test_bootstrap_needs_server_mode_and_excludes_bootstrap_expect(self) -> None:
        error = self.assertRaises(
            ConfigError, load, {"node_name": "n", "data_dir": "/d", "bootstrap": True}
        )
        self.assertIn("bootstrap needs server mode", str(error))
        self.assertRefused({"bootstrap": True, "bootstrap_expect": 3}, "mutually exclusive")

    def test_retry_join_wan_is_for_servers_with_its_own_interval(self) -> None:
        config = load(
            {**self.SERVER, "retry_join_wan": ["10.0.0.1:8302"], "retry_interval_wan": "5s"}
        )
        self.assertEqual(
            (config.retry_join_wan, config.retry_interval_wan), (("10.0.0.1:8302",), 5.0)
        )
        error = self.assertRaises(
            ConfigError, load, {"node_name": "n", "data_dir": "/d", "retry_join_wan": ["10.0.0.1"]}
        )
        self.assertIn("retry_join_wan needs server mode", str(error))
        self.assertRefused({"retry_interval_wan": "0s"}, "retry_interval_wan must be positive")
        self.assertRefused({"retry_interval_wan": "soon"}, "retry_interval_wan")

    def test_servers_stay_voters_on_signals_and_clients_leave_as_in_consul(self) -> None:
        server = load(self.SERVER)
        self.assertEqual((server.leave_on_terminate, server.skip_leave_on_interrupt), (False, True))
        client = load({"node_name": "c", "data_dir": "/d"})
        self.assertEqual((client.leave_on_terminate, client.skip_leave_on_interrupt), (True, False))
        told = load({**self.SERVER, "leave_on_terminate": True, "skip_leave_on_interrupt": False})
        self.assertEqual((told.leave_on_terminate, told.skip_leave_on_interrupt), (True, False))
        self.assertRefused({"leave_on_terminate": "yes"}, "leave_on_terminate")

    def test_the_bootstrap_flag(self) -> None:
        options = Options()
        options.parseOptions(["--node", "n", "--server", "--bootstrap", "--data-dir", "/d"])
        assert options.config is not None
        self.assertTrue(options.config.bootstrap)


class BadPorts(ConfigFiles):
    def test_out_of_range(self) -> None:
        for name, value in (("http", 70000), ("http", -1), ("serf_lan", -5), ("dns", 65536)):
            self.assertRefused({"ports": {name: value}}, f"port {name}")

    def test_not_a_number(self) -> None:
        for value in ("8500", True, 85.5, None, [8500]):
            self.assertRefused({"ports": {"http": value}}, "port http must be a number")

    def test_unknown_port(self) -> None:
        self.assertRefused({"ports": {"htp": 8500}}, "unknown port 'htp'")

    def test_off_only_where_consul_allows_it(self) -> None:
        config = load(DEV, [self.write("agent.json", {"ports": {"dns": -1, "https": -1}})])
        self.assertEqual((config.ports["dns"], config.ports["https"]), (-1, -1))


class BadEncryptKey(ConfigFiles):
    def test_not_base64(self) -> None:
        for key in ("not base64!", "pUDWwCKA0AR5ksQe6JQfDg", "\u00e9" * 24):
            self.assertRefused({"encrypt": key}, "encrypt is not valid base64")

    def test_wrong_length(self) -> None:
        for raw in (b"x" * 8, b"x" * 15, b"x" * 31, b"x" * 64):
            self.assertRefused({"encrypt": base64.b64encode(raw).decode()}, "16, 24 or 32 byte")

    def test_good_key_loads(self) -> None:
        config = load(DEV, [self.write("agent.json", {"encrypt": KEY_16})])
        self.assertEqual(config.encrypt, KEY_16)

    def test_verify_flags_default_true_and_load_from_files(self) -> None:
        config = load(DEV, [self.write("agent.json", {"encrypt": KEY_16})])
        self.assertEqual(
            (config.encrypt_verify_incoming, config.encrypt_verify_outgoing), (True, True)
        )
        given = {"encrypt": KEY_16, "encrypt_verify_incoming": False}
        later = {"encrypt_verify_outgoing": False}
        files = [self.write("a.json", given), self.write("b.json", later)]
        config = load(DEV, files)
        self.assertEqual(
            (config.encrypt_verify_incoming, config.encrypt_verify_outgoing), (False, False)
        )

    def test_verify_flags_must_be_booleans(self) -> None:
        for key in ("encrypt_verify_incoming", "encrypt_verify_outgoing"):
            for value in ("false", 0, None, [False]):
                self.assertRefused({key: value}, f"{key} must be a bool, not {value!r}")


class RaftSettings(ConfigFiles):
    def test_snapshot_settings_load_and_default_to_rafts_own(self) -> None:
        given = {"raft_snapshot_threshold": 100, "raft_trailing_logs": 10}
        config = load(DEV, [self.write("agent.json", given)])
        self.assertEqual((config.raft_snapshot_threshold, config.raft_trailing_logs), (100, 10))
        config = load(DEV, [self.write("agent.json", {})])
        self.assertEqual((config.raft_snapshot_threshold, config.raft_trailing_logs), (None, None))

    def test_not_positive_is_refused_by_name(self) -> None:
        self.assertRefused({"raft_trailing_logs": 0}, "raft_trailing_logs must be positive")


class BadServiceDefinitions(ConfigFiles):
    def test_talks_example_loads(self) -> None:
        path = self.write(
            "redis.json",
            '{"service": {"name": "redis", "tags": ["slave"], "port": 8000, "check": '
            '{"script": "/usr/local/bin/check_redis.py", "interval": "10s"}}}',
        )
        config = load(DEV, [], [self.dir])
        self.assertIsInstance(config, AgentConfig)
        [service] = config.services
        self.assertEqual((service.name, service.port, service.tags), ("redis", 8000, ("slave",)))
        self.assertEqual([c.check_id for c in service.checks], ["service:redis"])
        self.assertTrue(os.path.exists(path))

    def test_service_problems(self) -> None:
        for service, problem in (
            ({"port": 80}, "Missing service name"),
            ({"name": 5}, "must be a string"),
            ({"name": "web", "port": "80"}, "must be an integer"),
            ({"name": "web", "port": 70000}, "Invalid service port"),
            ({"name": "web", "port": 1e400}, "not valid JSON"),
            ({"name": "web", "tags": "a,b"}, "must be a list of strings"),
            ({"name": "web", "meta": {"v": 1}}, "must be a map of strings"),
            ({"name": "web", "address": "0.0.0.0"}, "Invalid service address"),
            ({"name": "web", "weights": {"passing": 0}}, "Passing must be greater than 0"),
            ({"name": "web", "check": {"ttl": "10s", "args": ["x"], "interval": "1s"}}, "only one"),
            ({"name": "web", "check": {"args": ["x"], "interval": "often"}}, "interval"),
            ({"name": "web", "check": {"args": ["x"]}}, "need an interval"),
            ({"name": "web", "check": {"interval": "10s"}}, "one of TTL"),
            ({"name": "web", "check": {"ttl": "%ds" % 10**300}}, "out of range"),
            ({"name": "web", "checks": {"ttl": "10s"}}, "must be a list"),
        ):
            if service.get("port") == 1e400:
                error = self.assertRefused('{"service": {"name": "web", "port": 1e400}}', problem)
            else:
                error = self.assertRefused({"service": service}, problem)
            if problem != "not valid JSON":
                self.assertIn("service definition 0", error)

    def test_services_list_names_the_bad_entry(self) -> None:
        error = self.assertRefused(
            {"services": [{"name": "a"}, {"name": "b", "port": -1}]}, "Invalid service port"
        )
        self.assertIn("service definition 1", error)

    def test_check_problems(self) -> None:
        for check, problem in (
            ({"ttl": "10s"}, "Missing check name"),
            ({"name": "c"}, "one of TTL"),
            ({"name": "c", "ttl": "10s", "status": "fine"}, "Invalid check status"),
            ({"name": "c", "tcp": "localhost", "interval": "10s"}, "TCP must be host:port"),
            ("c", "must be a JSON object"),
        ):
            error = self.assertRefused({"check": check}, problem)
            self.assertIn("check definition 0", error)


class TwistdOptions(ConfigFiles):
    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(["--node", "node1", *argv])
        return options

    def assertUsageError(self, argv: list[str], *problem: str) -> str:
        error = self.assertRaises(usage.UsageError, self.parse, *argv)
        for words in problem:
            self.assertIn(words, str(error))
        return str(error)

    def test_good_options(self) -> None:
        options = self.parse("--dev", "--http-port", "0", "--dc", "east")
        assert options.config is not None
        self.assertEqual((options.config.ports["http"], options.config.datacenter), (0, "east"))

    def test_advertise_and_advertise_wan(self) -> None:
        options = self.parse("--dev", "--advertise", "10.0.0.7", "--advertise-wan", "192.0.2.7")
        assert options.config is not None
        self.assertEqual(
            (options.config.advertise, options.config.advertise_wan), ("10.0.0.7", "192.0.2.7")
        )
        options = self.parse("--dev", "--advertise", "10.0.0.7")
        assert options.config is not None
        self.assertEqual(options.config.advertise_wan, "10.0.0.7")  # Consul's fallback
        self.assertUsageError(["--dev", "--advertise-wan", "nowhere"], "advertise_addr_wan")

    def test_tagged_addresses_follow_advertise_and_advertise_wan(self) -> None:
        options = self.parse("--dev", "--advertise", "10.0.0.7", "--advertise-wan", "2001:db8::7")
        assert options.config is not None
        self.assertEqual(
            options.config.tagged_addresses,
            {
                "lan": "10.0.0.7",
                "lan_ipv4": "10.0.0.7",
                "wan": "2001:db8::7",
                "wan_ipv6": "2001:db8::7",
            },
        )
        # no advertise address: the bind address for both, as Consul's fallbacks
        options = self.parse("--dev", "--bind", "127.0.0.3")
        assert options.config is not None
        self.assertEqual(
            options.config.tagged_addresses,
            {
                "lan": "127.0.0.3",
                "lan_ipv4": "127.0.0.3",
                "wan": "127.0.0.3",
                "wan_ipv4": "127.0.0.3",
            },
        )

    def test_bad_ports(self) -> None:
        for flag in ("--http-port", "--dns-port", "--serf-lan-port", "--serf-wan-port"):
            self.assertUsageError(["--dev", flag, "http"], "is not a port number")
            self.assertUsageError(["--dev", flag, "70000"], "out of range")
        self.assertUsageError(["--dev", "--server-port", "-1"], "port server", "out of range")

    def test_bad_values(self) -> None:
        self.assertUsageError(["--dev", "--bootstrap-expect", "three"])
        self.assertUsageError(["--dev", "--encrypt", "short"], "encrypt")
        self.assertUsageError(["--dev", "--client", "localhost"], "client_addr")
        self.assertUsageError(["--dev", "--dc", "dc/1"], "datacenter")
        self.assertUsageError(["--dev", "--log-level", "LOUD"], "log_level")
        self.assertUsageError(["--dev", "--join", "10.0.0.1:x"], "join")
        self.assertUsageError(["--dev", "--retry-join-wan", "10.0.0.1:x"], "retry_join_wan")

    def test_unknown_option_and_missing_value(self) -> None:
        self.assertUsageError(["--dev", "--bogus"], "bogus")
        self.assertUsageError(["--dev", "--dc"])

    def test_data_dir_required_without_dev(self) -> None:
        self.assertUsageError([], "data_dir")

    def test_unparsable_config_file_stops_twistd_and_names_it(self) -> None:
        bad = self.write("agent.json", '{"server": tru')
        self.assertUsageError(["--dev", "--config-file", bad], bad, "not valid JSON")

    def test_bad_file_in_config_dir_stops_twistd_and_names_it(self) -> None:
        self.write("a.json", {"datacenter": "east"})
        bad = self.write("b.json", {"ports": {"http": "8500"}})
        self.assertUsageError(["--dev", "--config-dir", self.dir], bad, "port http")

    def test_flags_win_over_files(self) -> None:
        path = self.write("agent.json", {"datacenter": "west", "ports": {"http": 9500}})
        options = self.parse("--dev", "--config-file", path, "--dc", "east")
        assert options.config is not None
        self.assertEqual((options.config.datacenter, options.config.ports["http"]), ("east", 9500))
