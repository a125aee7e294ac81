# -*- test-case-name: txconsul.test.agent.test_agent -*-
"""The agent as twistd builds it: options, config files, its own registrations, TTLs."""

from __future__ import annotations

import json
import os
import random
import sqlite3
from typing import Any

from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.names import dns
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from txconsul import tap
from txconsul.agent.agent import Agent
from txconsul.agent.definitions import parse_check, parse_service
from txconsul.agent.local import TTL_EXPIRED
from txconsul.config import load
from txconsul.raft.core import Snapshot
from txconsul.raft.logstore import SQLiteLogStore, StoreFailed
from txconsul.tap import Options, makeService

TALK_EXAMPLE = {
    "service": {
        "name": "redis",
        "tags": ["slave"],
        "port": 8000,
        "check": {"script": "/usr/local/bin/check_redis.py", "interval": "10s"},
    }
}


def write_json(directory: str, name: str, data: Any) -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        json.dump(data, f)
    return path


class MemoryAgentTests(SynchronousTestCase):
    """An agent on a memory reactor: no sockets, time under the test's control."""

    def make_agent(
        self, files: tuple[str, ...] = (), dirs: tuple[str, ...] = (), **flags: Any
    ) -> Agent:
        self.reactor = MemoryReactorClock()
        config = load({"dev": True, "node_name": "n1", **flags}, files, dirs)
        agent = Agent(config, self.reactor, random.Random(0))
        agent.startService()
        self.addCleanup(agent.stopService)
        self.successResultOf(agent.when_ready())
        return agent

    def test_agent_registers_its_node_serf_health_and_consul_service(self) -> None:
        agent = self.make_agent()
        c = agent.store.catalog
        self.assertEqual(list(c.nodes), ["n1"])
        self.assertEqual(c.nodes["n1"]["ID"], agent.node_id)
        self.assertEqual(c.node_checks("n1")[0]["CheckID"], "serfHealth")
        self.assertEqual(c.node_checks("n1")[0]["Status"], "passing")
        self.assertEqual(list(c.node_services("n1")), ["consul"])

    def test_dev_agent_is_a_one_server_raft_cluster_that_commits_at_once(self) -> None:
        agent = self.make_agent()
        assert agent.servers is not None and agent.servers.node is not None
        node = agent.servers.node
        self.assertEqual(node.peers(), [agent.config.rpc_address])
        self.assertTrue(agent.consensus.is_leader())
        self.assertEqual(agent.consensus.leader_address(), agent.config.rpc_address)
        indexes = [agent.store.last_index]
        for i in range(3):
            command = {"Type": "kv", "Verb": "set", "Key": f"k{i}", "Value": b"v"}
            self.assertIs(self.successResultOf(agent.consensus.apply(command)), True)
            indexes.append(agent.store.last_index)
        self.assertEqual(indexes, sorted(set(indexes)))
        self.assertEqual(node.core.commit_index, agent.store.last_index)
        self.assertIsNone(node._timer)  # a lone in-memory voter needs no Raft timer

    def test_the_dns_soa_serial_is_wall_clock_time_not_the_reactors(self) -> None:
        # the agent's reactor runs on the monotonic clock (seconds since boot)
        self.reactor = MemoryReactorClock()
        self.reactor.advance(12_345)
        config = load({"dev": True, "node_name": "n1", "ports": {"dns": 0}})
        wall = [1_732_500_000.7]
        agent = Agent(config, self.reactor, random.Random(0), wall=lambda: wall[0])
        agent.startService()
        self.addCleanup(agent.stopService)
        self.successResultOf(agent.when_ready())
        assert agent.dns is not None
        answer = agent.dns.authority.lookup(b"nobody.node.consul", dns.A)
        [soa] = answer.authority
        self.assertEqual(soa.payload.serial, 1_732_500_000)
        wall[0] += 60
        [soa] = agent.dns.authority.lookup(b"consul", dns.SOA).answers
        self.assertEqual(soa.payload.serial, 1_732_500_060)

    def test_server_without_bootstrap_waits_to_be_added_to_a_cluster(self) -> None:
        self.reactor = MemoryReactorClock()
        config = load({"node_name": "s1", "server": True, "data_dir": self.mktemp()})
        agent = Agent(config, self.reactor, random.Random(0))
        agent.startService()
        self.addCleanup(agent.stopService)
        ready = agent.when_ready()
        for _ in range(100):
            self.reactor.advance(0.1)
        self.assertNoResult(ready)
        assert agent.servers is not None
        self.assertIsNone(agent.servers.node)
        self.assertEqual(agent.consensus.leader_address(), "")
        self.assertFalse(agent.consensus.is_leader())
        agent.stopService()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_bootstrap_server_elects_itself_and_registers_itself(self) -> None:
        self.reactor = MemoryReactorClock()
        config = load(
            {"node_name": "s1", "server": True, "bootstrap": True, "data_dir": self.mktemp()}
        )
        agent = Agent(config, self.reactor, random.Random(0))
        agent.startService()
        self.addCleanup(agent.stopService)
        self.assertTrue(agent.consensus.is_leader())
        self.reactor.advance(0)  # on disk, the writes of a turn share one fsync
        self.successResultOf(agent.when_ready())
        self.assertEqual(list(agent.store.catalog.node_services("s1")), ["consul"])

    def test_server_with_a_corrupt_snapshot_refuses_to_start_and_says_why(self) -> None:
        data_dir = self.mktemp()
        store = SQLiteLogStore(os.path.join(data_dir, "raft"))
        store.store_snapshot(Snapshot(5, 1, ("127.0.0.1:8300",), b"state"), 5, 1)
        store.sync()
        store.close()
        db = sqlite3.connect(store.path, isolation_level=None)
        (packed,) = db.execute("SELECT value FROM stable WHERE key = 'snapshot'").fetchone()
        db.execute(
            "UPDATE stable SET value = ? WHERE key = 'snapshot'",
            (packed.replace(b"state", b"stbte"),),
        )
        db.close()
        self.reactor = MemoryReactorClock()
        config = load({"node_name": "s1", "server": True, "bootstrap": True, "data_dir": data_dir})
        stopped: list[bool] = []
        agent = Agent(config, self.reactor, random.Random(0), shutdown=lambda: stopped.append(True))
        ready = agent.when_ready()
        with capturedLogs() as events:
            agent.startService()
            self.reactor.advance(0)
        self.addCleanup(agent.stopService)
        self.failureResultOf(ready, StoreFailed)
        self.assertEqual(stopped, [True])
        texts = [formatEvent(e) for e in events]
        self.assertTrue(any("snapshot" in t and "corrupt" in t for t in texts), texts)
        self.assertTrue(any("could not start" in t for t in texts), texts)
        self.flushLoggedErrors(StoreFailed)

    def test_client_agent_registers_no_consul_service(self) -> None:
        self.reactor = MemoryReactorClock()
        data_dir = self.mktemp()
        config = load({"node_name": "n1", "data_dir": data_dir})
        agent = Agent(config, self.reactor, random.Random(0))
        agent.startService()
        self.addCleanup(agent.stopService)
        self.assertEqual(agent.store.catalog.node_services("n1"), {})
        self.assertFalse(config.server)

    def test_node_id_survives_a_restart_in_data_dir(self) -> None:
        data_dir = self.mktemp()
        first = self.make_agent(data_dir=data_dir)
        second = self.make_agent(data_dir=data_dir)
        self.assertEqual(first.node_id, second.node_id)
        with open(os.path.join(data_dir, "node-id")) as f:
            self.assertEqual(f.read(), first.node_id)

    def test_talk_example_loads_from_config_dir(self) -> None:
        config_dir = self.mktemp()
        os.makedirs(config_dir)
        write_json(config_dir, "redis.json", TALK_EXAMPLE)
        agent = self.make_agent(dirs=(config_dir,))
        c = agent.store.catalog
        [(node, svc)] = c.instances("redis", ["slave"])
        self.assertEqual((node["Node"], svc["Port"], svc["Tags"]), ("n1", 8000, ["slave"]))
        check = c.checks["n1"]["service:redis"]
        self.assertEqual(check["Type"], "script")
        self.assertEqual(check["Status"], "critical")
        self.assertEqual(check["ServiceName"], "redis")
        self.assertEqual(check["Definition"]["Interval"], "10s")

    def test_services_and_checks_keys_register_several(self) -> None:
        config_dir = self.mktemp()
        os.makedirs(config_dir)
        write_json(
            config_dir,
            "a.json",
            {
                "services": [
                    {"name": "a", "port": 1},
                    {
                        "name": "b",
                        "id": "b1",
                        "checks": [{"ttl": "5s"}, {"tcp": "localhost:1", "interval": "5s"}],
                    },
                ]
            },
        )
        write_json(config_dir, "b.json", {"check": {"name": "mem", "ttl": "30s"}})
        agent = self.make_agent(dirs=(config_dir,))
        self.assertEqual(sorted(agent.local.services), ["a", "b1"])
        self.assertEqual(sorted(agent.local.checks), ["mem", "service:b1:1", "service:b1:2"])

    def test_ttl_check_goes_critical_when_its_ttl_runs_out(self) -> None:
        agent = self.make_agent()
        self.successResultOf(
            agent.local.add_service(parse_service({"name": "w", "check": {"ttl": "10s"}}))
        )
        self.successResultOf(agent.local.update_ttl("service:w", "passing", "ok"))
        self.reactor.advance(9.9)
        check = agent.store.catalog.checks["n1"]["service:w"]
        self.assertEqual(check["Status"], "passing")
        self.successResultOf(agent.local.update_ttl("service:w", "passing", "ok"))
        self.reactor.advance(9.9)
        self.assertEqual(agent.store.catalog.checks["n1"]["service:w"]["Status"], "passing")
        self.reactor.advance(0.2)
        check = agent.store.catalog.checks["n1"]["service:w"]
        self.assertEqual((check["Status"], check["Output"]), ("critical", TTL_EXPIRED))

    def test_unchanged_ttl_pass_writes_nothing(self) -> None:
        agent = self.make_agent()
        self.successResultOf(agent.local.add_check(parse_check({"name": "t", "ttl": "10s"})))
        self.successResultOf(agent.local.update_ttl("t", "passing", ""))
        index = agent.store.last_index
        self.successResultOf(agent.local.update_ttl("t", "passing", ""))
        self.assertEqual(agent.store.last_index, index)

    def test_stopping_the_agent_cancels_its_timers(self) -> None:
        agent = self.make_agent()
        before = len(self.reactor.getDelayedCalls())  # the server's voter loop
        self.successResultOf(agent.local.add_check(parse_check({"name": "t", "ttl": "10s"})))
        self.assertEqual(len(self.reactor.getDelayedCalls()), before + 1)
        agent.stopService()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_replace_existing_checks_drops_checks_not_in_the_new_definition(self) -> None:
        agent = self.make_agent()
        two = parse_service({"name": "w", "checks": [{"ttl": "1s"}, {"ttl": "2s"}]})
        self.successResultOf(agent.local.add_service(two))
        one = parse_service({"name": "w", "checks": [{"id": "only", "ttl": "1s"}]})
        self.successResultOf(agent.local.add_service(one, replace_existing_checks=True))
        self.assertEqual(sorted(agent.local.checks), ["only"])
        self.assertEqual(sorted(agent.store.catalog.checks["n1"]), ["only", "serfHealth"])


class OptionsTests(SynchronousTestCase):
    def test_plugin_is_visible_to_twistd(self) -> None:
        names = [p.tapname for p in getPlugins(IServiceMaker)]
        self.assertIn("txconsul", names)

    def test_dev_flags_build_a_server_agent_on_the_given_ports(self) -> None:
        options = Options()
        options.parseOptions(["--dev", "--http-port", "0", "--dc", "East", "--node", "a1"])
        config = options.config
        assert config is not None
        self.assertTrue(config.server)
        self.assertEqual((config.datacenter, config.node_name), ("east", "a1"))
        self.assertEqual(config.ports["http"], 0)
        self.assertEqual(config.ports["dns"], 8600)

    def test_flags_win_over_config_files_and_later_files_win(self) -> None:
        config_dir = self.mktemp()
        os.makedirs(config_dir)
        write_json(
            config_dir, "10-a.json", {"datacenter": "one", "node_name": "x", "ports": {"http": 1}}
        )
        write_json(config_dir, "20-b.json", {"datacenter": "two", "ports": {"dns": 2}})
        options = Options()
        options.parseOptions(["--dev", "--config-dir", config_dir, "--node", "flagged"])
        config = options.config
        assert config is not None
        self.assertEqual((config.datacenter, config.node_name), ("two", "flagged"))
        self.assertEqual((config.ports["http"], config.ports["dns"]), (1, 2))

    def test_later_flags_for_later_issues_are_accepted_and_checked(self) -> None:
        options = Options()
        options.parseOptions(
            [
                "--server",
                "--data-dir",
                self.mktemp(),
                "--bind",
                "127.0.0.2",
                "--bootstrap-expect",
                "3",
                "--join",
                "127.0.0.3",
                "--retry-join",
                "127.0.0.4:8301",
                "--encrypt",
                "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s=",
                "--serf-lan-port",
                "18301",
                "--ui",
            ]
        )
        config = options.config
        assert config is not None
        self.assertEqual(config.bootstrap_expect, 3)
        self.assertEqual(config.join, ("127.0.0.3",))
        self.assertEqual(config.retry_join, ("127.0.0.4:8301",))
        self.assertEqual(config.ports["serf_lan"], 18301)
        self.assertTrue(config.ui)

    def test_retry_join_flags_accumulate_after_the_config_files_list(self) -> None:
        config_dir = self.mktemp()
        os.mkdir(config_dir)
        with open(os.path.join(config_dir, "a.json"), "w") as f:
            json.dump({"retry_join": ["10.0.0.9"], "retry_interval": "2s"}, f)
        options = Options()
        options.parseOptions(
            ["--dev", "--retry-join", "127.0.0.4:8301", "--retry-join", "example.invalid"]
        )
        assert options.config is not None
        self.assertEqual(options.config.retry_join, ("127.0.0.4:8301", "example.invalid"))
        self.assertEqual(options.config.join, ())  # not a --join
        self.assertEqual(options.flags()["retry_join"], ["127.0.0.4:8301", "example.invalid"])
        # as Consul's list flags, added to what the config files list
        options = Options()
        options.parseOptions(["--dev", "--config-dir", config_dir, "--retry-join", "127.0.0.5"])
        assert options.config is not None
        self.assertEqual(options.config.retry_join, ("10.0.0.9", "127.0.0.5"))
        self.assertEqual(options.config.retry_interval, 2.0)

    def test_a_bad_retry_join_address_is_a_usage_error(self) -> None:
        for bad in ("127.0.0.1:port", " "):
            options = Options()
            with self.assertRaises(usage.UsageError) as caught:
                options.parseOptions(["--dev", "--retry-join", bad])
            self.assertIn("retry_join", str(caught.exception))

    def test_make_service_builds_an_agent_without_starting_it(self) -> None:
        options = Options()
        options.parseOptions(["--dev", "--http-port", "0"])
        switched: list[Any] = []  # the test run's own reactor keeps its clock
        self.patch(tap, "use_monotonic_time", switched.append)
        service = makeService(options)
        self.assertIsInstance(service, Agent)
        self.assertFalse(service.running)
        self.assertEqual(switched, [service.reactor])  # its timers run on the monotonic clock


class EdgeTriggerTests(SynchronousTestCase):
    """Check results reach the catalog when the status changes, output alone rarely."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        config = load({"dev": True, "node_name": "n1", "check_update_interval": "5m"})
        self.agent = Agent(config, self.reactor, random.Random(0))
        self.agent.startService()
        self.addCleanup(self.agent.stopService)
        self.successResultOf(self.agent.local.add_check(parse_check({"name": "t", "ttl": "1h"})))
        self.state = self.agent.local.checks["t"]

    def catalog(self) -> tuple[str, str]:
        row = self.agent.store.catalog.checks["n1"]["t"]
        return row["Status"], row["Output"]

    def test_status_change_is_written_at_once(self) -> None:
        self.successResultOf(self.agent.local._set_status(self.state, "passing", "a"))
        self.assertEqual(self.catalog(), ("passing", "a"))

    def test_output_change_waits_for_check_update_interval(self) -> None:
        self.successResultOf(self.agent.local._set_status(self.state, "passing", "a"))
        index = self.agent.store.last_index
        self.reactor.advance(10)
        self.successResultOf(self.agent.local._set_status(self.state, "passing", "b"))
        self.successResultOf(self.agent.local._set_status(self.state, "passing", "c"))
        self.assertEqual(self.catalog(), ("passing", "a"))
        self.assertEqual(self.agent.store.last_index, index)
        self.reactor.advance(290)
        self.assertEqual(self.catalog(), ("passing", "c"))
        self.assertEqual(self.agent.store.last_index, index + 1)

    def test_status_change_carries_the_waiting_output_at_once(self) -> None:
        self.successResultOf(self.agent.local._set_status(self.state, "passing", "a"))
        self.successResultOf(self.agent.local._set_status(self.state, "passing", "b"))
        self.successResultOf(self.agent.local._set_status(self.state, "warning", "c"))
        self.assertEqual(self.catalog(), ("warning", "c"))
        self.assertIsNone(self.state.deferred_sync)

    def test_script_checks_from_the_api_are_refused_unless_enabled(self) -> None:
        from txconsul.errors import BadRequest

        check = parse_check({"name": "s", "args": ["/bin/true"], "interval": "10s"})
        self.assertRaises(BadRequest, self.agent.local.add_check, check)
        self.assertNotIn("s", self.agent.local.checks)
