# -*- test-case-name: txconsul.test.agent.test_local -*-
"""
The services and checks this agent owns, their runners and TTL timers.

A registration is written to the catalog at once, so that it is visible in
``/v1/catalog`` and ``/v1/health`` as soon as the call returns. After that,
check results travel edge-triggered: a change of status is written at once,
a change of output alone at most once per ``check_update_interval``.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from txconsul.agent.definitions import CheckDefinition, ServiceDefinition
from txconsul.checks.http import HTTPChecker
from txconsul.checks.runner import RUNNABLE, CheckRunner
from txconsul.checks.status import CheckResult
from txconsul.errors import BadRequest, NotFound

if TYPE_CHECKING:
    from txconsul.agent.agent import Agent

TTL_EXPIRED = "TTL expired"
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

    def catalog_row(self) -> dict[str, Any]:
        row = self.definition.catalog_row()
        row["Status"] = self.status
        row["Output"] = self.output
        return row

    def stop(self) -> None:
        for call in (self.timer, self.deferred_sync):
            if call is not None and call.active():
                call.cancel()
        self.timer = self.deferred_sync = None
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
        self.services: dict[str, ServiceDefinition] = {}
        self.checks: dict[str, CheckState] = {}

    # -- the catalog ------------------------------------------------------------

    def _register(
        self, service: ServiceDefinition | None, checks: list[CheckState]
    ) -> Deferred[Any]:
        request = self._agent.node_registration()
        request["Service"] = service.catalog_row() if service is not None else None
        request["Checks"] = [c.catalog_row() for c in checks]
        now = self._reactor.seconds()
        for c in checks:
            c.synced_at = now
        d: Deferred[Any] = self._agent.consensus.apply({"Type": "register", "Request": request})
        return d

    def _deregister(self, **what: str) -> Deferred[Any]:
        request = {"Node": self._agent.config.node_name, **what}
        d: Deferred[Any] = self._agent.consensus.apply({"Type": "deregister", "Request": request})
        return d

    # -- services -----------------------------------------------------------------

    def add_service(
        self,
        service: ServiceDefinition,
        replace_existing_checks: bool = False,
        from_config: bool = False,
    ) -> Deferred[Any]:
        """Own ``service`` and its checks, replacing any of the same ID."""
        for check in service.checks:
            self._allowed(check, from_config)
        sid = service.service_id
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
        for cid in [cid for cid, c in self.checks.items() if c.definition.service_id == sid]:
            self._untrack(cid)
        return self._deregister(ServiceID=sid)

    # -- checks -------------------------------------------------------------------

    def _allowed(self, check: CheckDefinition, from_config: bool) -> None:
        config = self._agent.config
        if check.kind != "script" or config.enable_script_checks:
            return
        if from_config and config.enable_local_script_checks:
            return
        if not from_config:
            raise BadRequest(SCRIPTS_DISABLED)

    def _may_run(self, check: CheckDefinition, from_config: bool) -> bool:
        if check.kind not in RUNNABLE:
            return False
        if check.kind != "script":
            return True
        config = self._agent.config
        return config.enable_script_checks or (from_config and config.enable_local_script_checks)

    def add_check(self, check: CheckDefinition, from_config: bool = False) -> Deferred[Any]:
        if check.service_id and check.service_id not in self.services:
            raise BadRequest(f"ServiceID {check.service_id!r} does not exist")
        self._allowed(check, from_config)
        state = self._track(check, from_config)
        return self._register(None, [state])

    def remove_check(self, cid: str) -> Deferred[Any]:
        if cid not in self.checks:
            return succeed(None)
        self._untrack(cid)
        return self._deregister(CheckID=cid)

    def _track(self, check: CheckDefinition, from_config: bool = False) -> CheckState:
        old = self.checks.get(check.check_id)
        if old is not None:
            old.stop()
        state = CheckState(check, check.status, check.output)
        self.checks[check.check_id] = state
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
        for state in self.checks.values():
            state.stop()

    def load(
        self, services: tuple[ServiceDefinition, ...], checks: tuple[CheckDefinition, ...]
    ) -> Deferred[Any]:
        """Register the definitions of the config files."""
        ds = [self.add_service(s, from_config=True) for s in services]
        ds += [self.add_check(c, from_config=True) for c in checks]
        return DeferredList(ds, fireOnOneErrback=True, consumeErrors=True)
