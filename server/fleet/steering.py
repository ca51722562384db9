"""The admin's intent, applied to live controllers: which SLO policy and controller govern
each instance, built once per policy revision."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from sqlalchemy.orm import Session, sessionmaker

from server.control.policy import Policy
from server.slo.controllers import ControllerError, controller_factory
from server.slo.spec import Resolution, SloSpec, resolve
from server.store.slo_policies import load_specs

log = logging.getLogger(__name__)


class Steering:
    def __init__(self, factory: sessionmaker[Session], default: SloSpec) -> None:
        self._factory = factory
        self.default = default
        controller_factory(default)  # the server's own settings must build: fail at start
        self.specs: list[SloSpec] = []
        self._built: dict[tuple[object, ...], Callable[[], Policy]] = {}

    async def reload(self) -> bool:
        """Read the policies again; True if any changed."""
        specs = await asyncio.to_thread(load_specs, self._factory)
        changed = [s.fingerprint for s in specs] != [s.fingerprint for s in self.specs]
        self.specs = specs
        return changed

    def resolve(self, instance_id: int, labels: Mapping[str, str]) -> Resolution:
        return resolve(self.specs, instance_id, labels, self.default)

    def spec_for(self, instance_id: int, labels: Mapping[str, str]) -> SloSpec:
        spec = self.resolve(instance_id, labels).spec
        try:
            self.controller(spec)
        except ControllerError as err:
            # The API refuses such a policy; one that slipped in (an older server, a
            # hand-edited row) must not leave an instance without control.
            log.error("SLO policy %s cannot build its controller (%s); default", spec.id, err)
            return self.default
        return spec

    def controller(self, spec: SloSpec) -> Callable[[], Policy]:
        built = self._built.get(spec.fingerprint)
        if built is None:
            built = controller_factory(spec)
            if len(self._built) > 4096:  # revisions of long-deleted policies
                self._built.clear()
            self._built[spec.fingerprint] = built
        return built
