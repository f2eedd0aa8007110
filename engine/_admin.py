"""The engine's administration: applications, models, versions, links, selection state.

Every call that changes state takes ``now`` like the event calls do (a driver passes its
clock; version changes are recorded with it in the decision log).  Read-only calls
(``describe_model``, ``probabilities``...) take no time.  The engine's other parts:
``core.py`` (queries, replicas, feedback), ``_batches.py``, ``_answers.py``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from ._state import _App, _EngineFields, _Replica, _Version
from ._types import ModelId, ReplicaId
from .batching import BatchController
from .errors import NotFound
from .metrics import Metrics
from .registry import Application, ModelSpec
from .selection import PolicyState, make_policy

_DEFAULT_BOUND_S = 0.020  # the latency bound of a model linked to no application


class _Admin(_EngineFields):
    """The engine's administrative and read-only calls (a part of ``Engine``)."""

    def add_application(self, app: Application, *, now: float) -> None:
        self.registry.add_application(app)
        a = self._apps[app.name] = _App(app, self.metrics, self.max_user_states)
        a.fifo = self._fifos.setdefault(app.slo_s, deque())

    def remove_application(self, name: str, *, now: float) -> None:
        """Remove application ``name`` (Clipper's ``delete_application``): later queries and
        feedback naming it get ``NotFound``, as for a name never added; its links and
        selection state go; its models, their versions and replicas stay.

        Nothing admitted is lost: each query or feedback item already queued or in flight
        holds its application and is finished as before, by its models' answers or at its
        deadline with the explained default (deadline, model error...); no reply is made
        here.  Its metrics stay (counters only grow); a new application of the same name
        starts with fresh selection state."""
        a = self._app(name)
        self.registry.remove_application(name)
        del self._apps[name]
        a.m_replies.value = float(a.m_latency.count + a.refused)
        self._refresh_bounds()  # its SLO no longer bounds its former models' batches

    def update_application(self, name: str, *, now: float, **changes: Any) -> Application:
        """Change an application's settings (SLO, policy, threshold...) without a restart.
        Selection state is kept when the policy changes (weights carry over)."""
        old = self._app(name)
        spec = self.registry.update_application(name, **changes)
        policy = make_policy(spec.policy, spec.policy_params)
        old.spec = spec
        old.fifo = self._fifos.setdefault(spec.slo_s, deque())
        if "policy" in changes or "policy_params" in changes:
            old.set_policy(policy)
        self._refresh_bounds()
        return spec

    def add_model(self, spec: ModelSpec, *, now: float) -> None:
        activated = self.registry.add_model(spec)
        ver = _Version(spec, self.metrics)
        self._versions[ver.mid] = ver
        if activated:
            self._active[spec.name] = ver

    def link(self, app: str, models: Sequence[str], *, now: float) -> list[str]:
        linked = self.registry.link(app, list(models))
        self._apps[app].relink(tuple(linked))
        self._refresh_bounds()
        return linked

    def unlink(self, app: str, models: Sequence[str], *, now: float) -> list[str]:
        linked = self.registry.unlink(app, list(models))
        self._apps[app].relink(tuple(linked))
        self._refresh_bounds()
        return linked

    def set_model_version(self, name: str, version: str, *, now: float) -> None:
        """Make ``version`` the one that answers (logged as ``("version", now, name,
        version)``)."""
        self.registry.set_version(name, version)
        self._active[name] = self._versions[ModelId(name, version)]
        if self.log is not None:
            self.log.append(("version", now, name, version))

    def rollback(self, name: str, version: str | None = None, *, now: float) -> str:
        """Go back to ``version`` (the previous one when None); logged like a version set."""
        v = self.registry.rollback(name, version)
        self._active[name] = self._versions[ModelId(name, v)]
        if self.log is not None:
            self.log.append(("version", now, name, v))
        return v

    def active_version(self, name: str) -> str:
        self.registry.model(name)
        return self.registry.active[name]

    def selection_state(self, app: str, context: Hashable | None = None) -> PolicyState:
        return self._app(app).state(context)

    def selection_states(self, app: str) -> dict[Hashable | None, PolicyState]:
        return dict(self._app(app).states)

    def load_selection_state(
        self, app: str, context: Hashable | None, state: PolicyState, *, now: float
    ) -> None:
        a = self._app(app)
        a.put_state(context, state)  # bounded like any user's state
        a.dirty.add(context)
        if state.models != a.models:
            a.relink(a.models)

    def probabilities(self, app: str, context: Hashable | None = None) -> dict[str, float]:
        a = self._app(app)
        s = a.state(context)
        return dict(zip(s.models, a.policy.probabilities(s), strict=True))

    def replicas(self, name: str | None = None) -> list[ReplicaId]:
        return sorted(
            r
            for v in self._versions.values()
            for r in v.replicas
            if name is None or r.model == name
        )

    def controller(self, replica: ReplicaId) -> BatchController:
        return self._replica(replica).ctrl

    def describe_model(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": name,
            "active_version": self.active_version(name),
            "versions": {},
        }
        for mid, v in self._versions.items():
            if mid.name == name:
                out["versions"][mid.version] = {
                    "spec": v.spec.to_dict(),
                    "queued": len(v.queue),
                    "replicas": {
                        str(r.id): {"busy": r.batch is not None, **r.ctrl.describe()}
                        for r in v.replicas.values()
                    },
                }
        return out

    def _app(self, name: str) -> _App:
        a = self._apps.get(name)
        if a is None:
            raise NotFound(f"application {name!r} does not exist")
        return a

    def _version(self, name: str, version: str | None) -> _Version:
        spec = self.registry.model(name, version)
        return self._versions[ModelId(spec.name, spec.version)]

    def _replica(self, rid: ReplicaId) -> _Replica:
        v = self._versions.get(rid.model_id)
        r = v.replicas.get(rid) if v is not None else None
        if r is None:
            raise NotFound(f"replica {rid} is not up")
        return r

    def _bound_for(self, name: str, spec: ModelSpec) -> float:
        if spec.batching.latency_bound_s is not None:
            return spec.batching.latency_bound_s
        slos = [self._apps[a].spec.slo_s for a in self.registry.apps_of_model(name)]
        return min(slos) if slos else _DEFAULT_BOUND_S

    def _refresh_bounds(self) -> None:
        for v in self._versions.values():
            bound = self._bound_for(v.mid.name, v.spec)
            for r in v.replicas.values():
                r.ctrl.latency_bound_s = bound

    # ================================================================== metrics
    def sync_metrics(self) -> Metrics:
        """The metrics, with counters kept elsewhere (cache evictions) brought up to date."""
        self._m_evictions.value = float(self.cache.evictions)
        for app in self._apps.values():
            app.m_replies.value = float(app.m_latency.count + app.refused)
        return self.metrics

    def apps(self) -> Mapping[str, Application]:
        return dict(self.registry.apps)
