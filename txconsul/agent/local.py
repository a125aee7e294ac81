# -*- test-case-name: txconsul.test.agent.test_local -*-
"""
The services and checks this agent owns, and the TTL timers of its checks.

Every change is written to the catalog at once, so that a registration is
visible in ``/v1/catalog`` and ``/v1/health`` as soon as the call returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from txconsul.agent.definitions import CheckDefinition, ServiceDefinition
from txconsul.errors import BadRequest, NotFound

if TYPE_CHECKING:
    from txconsul.agent.agent import Agent

TTL_EXPIRED = "TTL expired"


@attrs.define
class CheckState:
    """One check with its current status and output."""

    definition: CheckDefinition
    status: str
    output: str = ""
    timer: IDelayedCall | None = None

    def catalog_row(self) -> dict[str, Any]:
        row = self.definition.catalog_row()
        row["Status"] = self.status
        row["Output"] = self.output
        return row


class LocalState:
    """This agent's own services and checks."""

    log = Logger()

    def __init__(self, agent: Agent, clock: IReactorTime) -> None:
        self._agent = agent
        self._clock = clock
        self.services: dict[str, ServiceDefinition] = {}
        self.checks: dict[str, CheckState] = {}

    # -- the catalog ------------------------------------------------------------

    def _register(
        self, service: ServiceDefinition | None, checks: list[CheckState]
    ) -> Deferred[Any]:
        request = self._agent.node_registration()
        request["Service"] = service.catalog_row() if service is not None else None
        request["Checks"] = [c.catalog_row() for c in checks]
        d: Deferred[Any] = self._agent.consensus.apply({"Type": "register", "Request": request})
        return d

    def _deregister(self, **what: str) -> Deferred[Any]:
        request = {"Node": self._agent.config.node_name, **what}
        d: Deferred[Any] = self._agent.consensus.apply({"Type": "deregister", "Request": request})
        return d

    # -- services -----------------------------------------------------------------

    def add_service(
        self, service: ServiceDefinition, replace_existing_checks: bool = False
    ) -> Deferred[Any]:
        """Own ``service`` and its checks, replacing any of the same ID."""
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
        states = [self._track(c) for c in service.checks]
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

    def add_check(self, check: CheckDefinition) -> Deferred[Any]:
        if check.service_id and check.service_id not in self.services:
            raise BadRequest(f"ServiceID {check.service_id!r} does not exist")
        state = self._track(check)
        return self._register(None, [state])

    def remove_check(self, cid: str) -> Deferred[Any]:
        if cid not in self.checks:
            return succeed(None)
        self._untrack(cid)
        return self._deregister(CheckID=cid)

    def _track(self, check: CheckDefinition) -> CheckState:
        old = self.checks.get(check.check_id)
        if old is not None and old.timer is not None and old.timer.active():
            old.timer.cancel()
        state = CheckState(check, check.status, check.output)
        self.checks[check.check_id] = state
        if check.kind == "ttl" and check.ttl is not None:
            state.timer = self._clock.callLater(check.ttl, self._ttl_expired, check.check_id)
        return state

    def _untrack(self, cid: str) -> None:
        state = self.checks.pop(cid, None)
        if state is not None and state.timer is not None and state.timer.active():
            state.timer.cancel()

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
        state.timer = self._clock.callLater(state.definition.ttl, self._ttl_expired, cid)
        return self._set_status(state, status, output)

    def _set_status(self, state: CheckState, status: str, output: str) -> Deferred[Any]:
        if state.status == status and state.output == output:
            return succeed(None)
        state.status, state.output = status, output
        sid = state.definition.service_id
        return self._register(self.services.get(sid) if sid else None, [state])

    def _ttl_expired(self, cid: str) -> None:
        state = self.checks.get(cid)
        if state is None:
            return
        state.timer = None
        self.log.info("TTL of check {check} expired", check=cid)
        d = self._set_status(state, "critical", TTL_EXPIRED)
        d.addErrback(lambda f: self.log.failure("recording TTL expiry of {check}", f, check=cid))

    def stop(self) -> None:
        """Cancel every timer (the agent is stopping)."""
        for state in self.checks.values():
            if state.timer is not None and state.timer.active():
                state.timer.cancel()
            state.timer = None

    def load(
        self, services: tuple[ServiceDefinition, ...], checks: tuple[CheckDefinition, ...]
    ) -> Deferred[Any]:
        """Register the definitions of the config files."""
        ds = [self.add_service(s) for s in services]
        ds += [self.add_check(c) for c in checks]
        return DeferredList(ds, fireOnOneErrback=True, consumeErrors=True)
