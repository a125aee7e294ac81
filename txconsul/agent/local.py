# -*- test-case-name: txconsul.test.agent.test_local -*-
"""
The services and checks this agent owns, their runners and TTL timers, and
anti-entropy.

A registration is written to the catalog at once (through the servers, on a
client agent), so that it is visible in ``/v1/catalog`` and ``/v1/health``
as soon as the call returns. After that, check results travel
edge-triggered: a change of status is written at once, a change of output
alone at most once per ``check_update_interval``.

Besides, a full sync runs periodically (``txconsul.agent.antientropy``
says when): it reads the catalog's view of this node from a server and
writes only what differs from the agent's truth, so a quiet agent writes
nothing. A write that finds no server (none known, no leader, the
connection lost) is not an error for the caller: it is logged, and a full
sync soon after puts it right, as it does when a server joins the LAN pool.
"""

from __future__ import annotations

import json
import os
import random
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
    ensureDeferred,
    succeed,
)
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from txconsul.agent import antientropy
from txconsul.agent.definitions import (
    CheckDefinition,
    ServiceDefinition,
    parse_check,
    parse_service,
)
from txconsul.checks.http import HTTPChecker
from txconsul.checks.runner import MAX_CONCURRENT_RUNS, RUNNABLE, CheckRunner
from txconsul.checks.status import CheckResult
from txconsul.errors import BadRequest, NoLeader, NotFound
from txconsul.raft.core import NotLeader
from txconsul.raft.logstore import StoreFailed
from txconsul.rpc.errors import RPCError

if TYPE_CHECKING:
    from txconsul.agent.agent import Agent

TTL_EXPIRED = "TTL expired"
NODE_MAINTENANCE = "_node_maintenance"
SERVICE_MAINTENANCE = "_service_maintenance:"
DEFAULT_MAINTENANCE_REASON = (
    "Maintenance mode is enabled for this node, but no reason was provided."
    " This is a default message."
)
SCRIPTS_DISABLED = (
    "Scripts are disabled on this agent; to enable, configure 'enable_script_checks'"
    " or 'enable_local_script_checks' to true"
)


@attrs.define
class CheckState:
    """One check with its current status and output."""

    definition: CheckDefinition
    status: str
    output: str = ""
    timer: IDelayedCall | None = None
    runner: CheckRunner | None = None
    # When the output last reached the catalog, and the deferred write of an
    # output-only change, if one is waiting.
    synced_at: float = 0.0
    deferred_sync: IDelayedCall | None = None
    # Deregisters the check's service once it has been critical for
    # deregister_critical_service_after.
    reaper: IDelayedCall | None = None

    def catalog_row(self) -> dict[str, Any]:
        row = self.definition.catalog_row()
        row["Status"] = self.status
        row["Output"] = self.output
        return row

    def stop(self) -> None:
        for call in (self.timer, self.deferred_sync, self.reaper):
            if call is not None and call.active():
                call.cancel()
        self.timer = self.deferred_sync = self.reaper = None
        if self.runner is not None:
            self.runner.stop()
            self.runner = None


class LocalState:
    """This agent's own services and checks."""

    log = Logger()

    def __init__(self, agent: Agent, reactor: Any, rng: random.Random | None = None) -> None:
        self._agent = agent
        self._reactor = reactor
        self._rng = rng if rng is not None else random.Random()
        self._http: HTTPChecker | None = None
        self._run_limit = DeferredSemaphore(MAX_CONCURRENT_RUNS)
        self.services: dict[str, ServiceDefinition] = {}
        self.checks: dict[str, CheckState] = {}
        # What came from config files (reload replaces it), and the bodies of
        # what came through the API (persisted in data_dir, restored at start).
        self.from_config: set[tuple[str, str]] = set()
        self._api_bodies: dict[str, dict[str, Any]] = {"services": {}, "checks": {}}
        self._maintenance: dict[str, str] = {}
        #: catalog writes sent (each register or deregister), and full syncs run
        self.writes = 0
        self.full_syncs = 0
        self._sync_timer: IDelayedCall | None = None
        self._syncing = False
        self._stopped = False
        self._in_flight: set[Deferred[Any]] = set()

    # -- the catalog ------------------------------------------------------------

    def catalog_write(self, command: dict[str, Any]) -> Deferred[Any]:
        """
        One catalog write through the agent's consensus. A write that found
        no server or no leader is logged and left to the next full sync,
        which comes sooner than usual.
        """
        self.writes += 1
        d: Deferred[Any] = self._agent.consensus.apply(command)
        if not d.called:  # a forwarded write, cancelled if the agent stops first
            self._in_flight.add(d)

            def landed(result: object) -> object:
                self._in_flight.discard(d)
                return result

            d.addBoth(landed)

        def failed(f: Failure) -> Failure | None:
            if f.check(CancelledError):
                return None  # the agent is stopping
            if not f.check(NoLeader, NotLeader, RPCError, StoreFailed):
                return f
            self.log.warn(
                "catalog write not done, anti-entropy will retry: {why}",
                why=f.getErrorMessage(),
            )
            self._sync_after(antientropy.retry_after_failure(self._cluster_size(), self._rng))
            return None

        return d.addErrback(failed)

    def _register(
        self, service: ServiceDefinition | None, checks: list[CheckState]
    ) -> Deferred[Any]:
        request = self._agent.node_registration()
        request["Service"] = service.catalog_row() if service is not None else None
        request["Checks"] = [c.catalog_row() for c in checks]
        now = self._reactor.seconds()
        for c in checks:
            c.synced_at = now
        return self.catalog_write({"Type": "register", "Request": request})

    def _deregister(self, **what: str) -> Deferred[Any]:
        request = {"Node": self._agent.config.node_name, **what}
        return self.catalog_write({"Type": "deregister", "Request": request})

    # -- anti-entropy ------------------------------------------------------------

    @property
    def sync_timer(self) -> IDelayedCall | None:
        """The timer of the next full sync (tests bring it forward)."""
        return self._sync_timer

    def _cluster_size(self) -> int:
        pool = self._agent.membership.lan
        return len(pool.serf.members) if pool is not None else 1

    def start_sync(self) -> Deferred[Any]:
        """The first full sync (the agent is starting); later ones run on their own timer."""
        return self._full_sync_now()

    def trigger_sync(self) -> None:
        """A server joined: a full sync within a few seconds (staggered)."""
        if self._sync_timer is None and not self._syncing:
            return  # the agent is still starting: its first full sync is to come
        delay = antientropy.stagger(antientropy.SERVER_UP_INTERVAL, self._cluster_size(), self._rng)
        self._sync_after(delay)

    def _sync_after(self, delay: float) -> None:
        """Arm the full sync timer for ``delay`` seconds, unless it fires sooner already."""
        if self._stopped:
            return
        timer = self._sync_timer
        if timer is not None and timer.active():
            if timer.getTime() <= self._reactor.seconds() + delay:
                return
            timer.cancel()
        self._sync_timer = self._reactor.callLater(delay, self._full_sync_now)

    def _full_sync_now(self) -> Deferred[Any]:
        if self._syncing or self._stopped:
            return succeed(None)
        self._syncing = True
        if self._sync_timer is not None and self._sync_timer.active():
            self._sync_timer.cancel()
        self._sync_timer = None
        d = ensureDeferred(self.full_sync())

        def done(ok: bool) -> None:
            self._syncing = False
            nodes = self._cluster_size()
            if ok:
                self._sync_after(antientropy.next_full_sync(nodes, self._rng))
            else:
                self._sync_after(antientropy.retry_after_failure(nodes, self._rng))

        def failed(f: Failure) -> bool:
            if not f.check(CancelledError):
                self.log.warn("anti-entropy full sync failed: {why}", why=f.getErrorMessage())
            return False

        return d.addErrback(failed).addCallback(done)

    async def full_sync(self) -> bool:
        """Read the catalog's view of this node and correct it (True once done)."""
        self.full_syncs += 1
        agent = self._agent
        remote = await agent.node_state()
        checks = {cid: c.catalog_row() for cid, c in self.checks.items()}
        lagging = {
            cid
            for cid, c in self.checks.items()
            if c.deferred_sync is not None and c.deferred_sync.active()
        }
        services = {sid: s.catalog_row() for sid, s in self.services.items()}
        todo = antientropy.plan(
            agent.node_registration(),
            services,
            checks,
            remote,
            lagging,
            server=agent.config.server,
        )
        if not todo.writes():
            return True
        self.log.info(
            "anti-entropy: {n} catalog entries of node {node} to correct: {plan}",
            n=todo.writes(),
            node=agent.config.node_name,
            plan=todo,
        )
        writes: list[Deferred[Any]] = []
        for sid in todo.services:
            service = self.services[sid]
            states = [c for c in self.checks.values() if c.definition.service_id == sid]
            writes.append(self._register(service, states))
        for cid in todo.checks:
            state = self.checks[cid]
            sid = state.definition.service_id
            writes.append(self._register(self.services.get(sid) if sid else None, [state]))
        if todo.node:
            writes.append(self._register(None, []))
        writes += [self._deregister(ServiceID=sid) for sid in todo.deregister_services]
        writes += [self._deregister(CheckID=cid) for cid in todo.deregister_checks]
        # a write that found no server has armed a sooner retry already (catalog_write)
        for ok, result in await DeferredList(writes, consumeErrors=True):
            if not ok:
                self.log.warn("anti-entropy write refused: {why}", why=result.getErrorMessage())
        return True

    # -- services -----------------------------------------------------------------

    def add_service(
        self,
        service: ServiceDefinition,
        replace_existing_checks: bool = False,
        from_config: bool = False,
        body: dict[str, Any] | None = None,
    ) -> Deferred[Any]:
        """
        Own ``service`` and its checks, replacing any of the same ID.

        :param body: the registration as the API received it; given, it is
            kept in ``data_dir`` so that the service survives a restart.
        """
        for check in service.checks:
            self._allowed(check, from_config)
        sid = service.service_id
        self._source("services", sid, from_config, body)
        new_ids = {c.check_id for c in service.checks}
        stale = []
        if replace_existing_checks:
            stale = [
                cid
                for cid, c in self.checks.items()
                if c.definition.service_id == sid and cid not in new_ids
            ]
        self.services[sid] = service
        states = [self._track(c, from_config) for c in service.checks]
        d = self._register(service, states)
        if stale:
            d.addCallback(lambda _: DeferredList([self.remove_check(cid) for cid in stale]))
        return d

    def remove_service(self, sid: str) -> Deferred[Any]:
        if self.services.pop(sid, None) is None:
            return succeed(None)
        self._source("services", sid, False, None)
        self._maintenance.pop(SERVICE_MAINTENANCE + sid, None)
        for cid in [cid for cid, c in self.checks.items() if c.definition.service_id == sid]:
            self._untrack(cid)
        return self._deregister(ServiceID=sid)

    # -- checks -------------------------------------------------------------------

    def _scripts_enabled(self, from_config: bool) -> bool:
        config = self._agent.config
        return config.enable_script_checks or (from_config and config.enable_local_script_checks)

    def _allowed(self, check: CheckDefinition, from_config: bool) -> None:
        """The API refuses script checks while scripts are disabled; config
        files may still define them (they are registered, not run)."""
        if check.kind == "script" and not from_config and not self._scripts_enabled(False):
            raise BadRequest(SCRIPTS_DISABLED)

    def _may_run(self, check: CheckDefinition, from_config: bool) -> bool:
        if check.kind not in RUNNABLE:
            return False
        return check.kind != "script" or self._scripts_enabled(from_config)

    def add_check(
        self,
        check: CheckDefinition,
        from_config: bool = False,
        body: dict[str, Any] | None = None,
    ) -> Deferred[Any]:
        if check.service_id and check.service_id not in self.services:
            raise BadRequest(f"ServiceID {check.service_id!r} does not exist")
        self._allowed(check, from_config)
        self._source("checks", check.check_id, from_config, body)
        state = self._track(check, from_config)
        sid = check.service_id
        return self._register(self.services.get(sid) if sid else None, [state])

    def remove_check(self, cid: str) -> Deferred[Any]:
        if cid not in self.checks:
            return succeed(None)
        self._source("checks", cid, False, None)
        self._untrack(cid)
        return self._deregister(CheckID=cid)

    def _track(self, check: CheckDefinition, from_config: bool = False) -> CheckState:
        old = self.checks.get(check.check_id)
        if old is not None:
            old.stop()
        state = CheckState(check, check.status, check.output)
        self.checks[check.check_id] = state
        self._arm_reaper(state)
        if check.kind == "ttl" and check.ttl is not None:
            state.timer = self._reactor.callLater(check.ttl, self._ttl_expired, check.check_id)
        elif self._may_run(check, from_config):
            cid = check.check_id
            state.runner = CheckRunner(
                self._reactor,
                check,
                lambda result: self._ran(cid, state, result),
                self._rng,
                self._http_checker(),
                self._run_limit,
            )
            state.runner.start()
        elif check.kind == "script":
            self.log.warn(
                "script check {check} is registered but not run: {why}",
                check=check.check_id,
                why=SCRIPTS_DISABLED,
            )
        return state

    def _http_checker(self) -> HTTPChecker:
        if self._http is None:
            self._http = HTTPChecker(self._reactor)
        return self._http

    def _untrack(self, cid: str) -> None:
        state = self.checks.pop(cid, None)
        if state is not None:
            state.stop()

    def _ran(self, cid: str, state: CheckState, result: CheckResult) -> None:
        if self.checks.get(cid) is not state:
            return  # replaced or removed while it ran
        d = self._set_status(state, result.status, result.output)
        d.addErrback(lambda f: self.log.failure("recording result of {check}", f, check=cid))

    def update_ttl(self, cid: str, status: str, output: str) -> Deferred[Any]:
        """A TTL check was passed, warned or failed: record it and restart its timer."""
        state = self.checks.get(cid)
        if state is None:
            raise NotFound(f"Unknown check ID {cid!r}")
        if state.definition.kind != "ttl":
            raise BadRequest(f"Check ID {cid!r} does not have an associated TTL")
        if state.timer is not None and state.timer.active():
            state.timer.cancel()
        assert state.definition.ttl is not None
        state.timer = self._reactor.callLater(state.definition.ttl, self._ttl_expired, cid)
        return self._set_status(state, status, output)

    def _set_status(self, state: CheckState, status: str, output: str) -> Deferred[Any]:
        """
        Record a result; write it to the catalog if the status changed, or if
        only the output did and ``check_update_interval`` has passed since
        the last write (otherwise the write waits until it has).
        """
        if state.status == status and state.output == output:
            return succeed(None)
        status_changed = state.status != status
        state.status, state.output = status, output
        if status_changed:
            self._arm_reaper(state)
        if not status_changed:
            wait = state.synced_at + self._agent.config.check_update_interval
            wait -= self._reactor.seconds()
            if wait > 0:
                if state.deferred_sync is None or not state.deferred_sync.active():
                    state.deferred_sync = self._reactor.callLater(wait, self._sync_later, state)
                return succeed(None)
        if state.deferred_sync is not None and state.deferred_sync.active():
            state.deferred_sync.cancel()
        state.deferred_sync = None
        return self._sync(state)

    def _sync(self, state: CheckState) -> Deferred[Any]:
        sid = state.definition.service_id
        return self._register(self.services.get(sid) if sid else None, [state])

    def _sync_later(self, state: CheckState) -> None:
        state.deferred_sync = None
        if self.checks.get(state.definition.check_id) is state:
            d = self._sync(state)
            d.addErrback(lambda f: self.log.failure("syncing check output", f))

    # -- deregister_critical_service_after -------------------------------------------

    def _arm_reaper(self, state: CheckState) -> None:
        after = state.definition.deregister_critical_service_after
        if after is None or not state.definition.service_id:
            return
        if state.status != "critical":
            if state.reaper is not None and state.reaper.active():
                state.reaper.cancel()
            state.reaper = None
        elif state.reaper is None or not state.reaper.active():
            # As Consul, never sooner than a minute.
            state.reaper = self._reactor.callLater(max(after, 60.0), self._reap, state)

    def _reap(self, state: CheckState) -> None:
        state.reaper = None
        sid = state.definition.service_id
        if self.checks.get(state.definition.check_id) is not state or state.status != "critical":
            return
        self.log.info(
            "check {check} critical for too long: deregistering service {service}",
            check=state.definition.check_id,
            service=sid,
        )
        d = self.remove_service(sid)
        d.addErrback(lambda f: self.log.failure("reaping service {service}", f, service=sid))

    # -- maintenance ---------------------------------------------------------------

    def node_maintenance(self, enable: bool, reason: str) -> Deferred[Any]:
        """Take the whole node out of discovery (a critical node-level check), or back."""
        return self._maintenance_check(
            NODE_MAINTENANCE, "", "Node Maintenance Mode", enable, reason
        )

    def service_maintenance(self, sid: str, enable: bool, reason: str) -> Deferred[Any]:
        if sid not in self.services:
            raise NotFound(f"Unknown service ID {sid!r}")
        return self._maintenance_check(
            SERVICE_MAINTENANCE + sid, sid, "Service Maintenance Mode", enable, reason
        )

    def _maintenance_check(
        self, cid: str, sid: str, name: str, enable: bool, reason: str
    ) -> Deferred[Any]:
        if not enable:
            self._maintenance.pop(cid, None)
            self._persist()
            if cid not in self.checks:
                return succeed(None)
            self._untrack(cid)
            return self._deregister(CheckID=cid)
        what = "service" if sid else "node"
        notes = reason or DEFAULT_MAINTENANCE_REASON.replace("node", what)
        self._maintenance[cid] = reason
        self._persist()
        check = CheckDefinition(
            check_id=cid, name=name, kind="maintenance", service_id=sid, notes=notes
        )
        state = self._track(check)
        return self._register(self.services.get(sid) if sid else None, [state])

    # -- persistence -----------------------------------------------------------------

    def _state_file(self) -> str | None:
        data_dir = self._agent.config.data_dir
        return os.path.join(data_dir, "agent-state.json") if data_dir else None

    def _source(self, kind: str, key: str, from_config: bool, body: dict[str, Any] | None) -> None:
        """Record where a definition came from, and keep API bodies on disk."""
        if from_config:
            self.from_config.add((kind, key))
        else:
            self.from_config.discard((kind, key))
        bodies = self._api_bodies[kind]
        if body is not None:
            bodies[key] = body
        elif key in bodies:
            del bodies[key]
        else:
            return
        self._persist()

    def _persist(self) -> None:
        path = self._state_file()
        if path is None:
            return
        data = {**self._api_bodies, "maintenance": self._maintenance}
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def restore(self) -> Deferred[Any]:
        """Register again what the API registered before the agent restarted."""
        path = self._state_file()
        if path is None or not os.path.exists(path):
            return succeed(None)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            services = dict(data.get("services") or {})
            checks = dict(data.get("checks") or {})
            maintenance = dict(data.get("maintenance") or {})
        except (OSError, ValueError, TypeError, AttributeError) as e:
            self.log.error("cannot read {path}, starting without it: {why}", path=path, why=e)
            return succeed(None)
        ds: list[Deferred[Any]] = []
        for key, body in services.items():
            try:
                ds.append(self.add_service(parse_service(body), body=body))
            except Exception as e:  # noqa: BLE001 - one bad entry must not stop the rest
                self.log.error("dropping saved service {key}: {why}", key=key, why=e)
        for key, body in checks.items():
            try:
                ds.append(self.add_check(parse_check(body), body=body))
            except Exception as e:  # noqa: BLE001 - one bad entry must not stop the rest
                self.log.error("dropping saved check {key}: {why}", key=key, why=e)
        for cid, reason in maintenance.items():
            if cid == NODE_MAINTENANCE:
                ds.append(self.node_maintenance(True, reason))
            elif (
                cid.startswith(SERVICE_MAINTENANCE)
                and cid[len(SERVICE_MAINTENANCE) :] in self.services
            ):
                ds.append(self.service_maintenance(cid[len(SERVICE_MAINTENANCE) :], True, reason))
        return DeferredList(ds, consumeErrors=True)

    # -- reload ------------------------------------------------------------------------

    def reload(
        self, services: tuple[ServiceDefinition, ...], checks: tuple[CheckDefinition, ...]
    ) -> Deferred[Any]:
        """
        Bring the config-file definitions to ``services`` and ``checks``.

        Removed ones go, added and changed ones are registered again, and
        unchanged ones are left alone, their checks still running.
        """
        ds: list[Deferred[Any]] = []
        new_services = {s.service_id: s for s in services}
        new_checks = {c.check_id: c for c in checks}
        for kind, key in sorted(self.from_config):
            if kind == "services" and key not in new_services:
                ds.append(self.remove_service(key))
            elif kind == "checks" and key not in new_checks:
                ds.append(self.remove_check(key))
        for sid, service in new_services.items():
            if ("services", sid) in self.from_config and self.services.get(sid) == service:
                continue
            ds.append(self.add_service(service, replace_existing_checks=True, from_config=True))
        for cid, check in new_checks.items():
            state = self.checks.get(cid)
            if ("checks", cid) in self.from_config and state and state.definition == check:
                continue
            ds.append(self.add_check(check, from_config=True))
        return DeferredList(ds, fireOnOneErrback=True, consumeErrors=True)

    def _ttl_expired(self, cid: str) -> None:
        state = self.checks.get(cid)
        if state is None:
            return
        state.timer = None
        self.log.info("TTL of check {check} expired", check=cid)
        d = self._set_status(state, "critical", TTL_EXPIRED)
        d.addErrback(lambda f: self.log.failure("recording TTL expiry of {check}", f, check=cid))

    def stop(self) -> None:
        """Cancel every timer and run (the agent is stopping)."""
        self._stopped = True
        if self._sync_timer is not None and self._sync_timer.active():
            self._sync_timer.cancel()
        self._sync_timer = None
        for d in list(self._in_flight):
            d.cancel()
        for state in self.checks.values():
            state.stop()

    def load(
        self, services: tuple[ServiceDefinition, ...], checks: tuple[CheckDefinition, ...]
    ) -> Deferred[Any]:
        """Register the definitions of the config files, then what the API
        registered before a restart (kept in ``data_dir``)."""
        ds = [self.add_service(s, from_config=True) for s in services]
        ds += [self.add_check(c, from_config=True) for c in checks]
        d = DeferredList(ds, fireOnOneErrback=True, consumeErrors=True)
        return d.addCallback(lambda _: self.restore())
