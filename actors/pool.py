"""The handles of one Ray role, held by the driver: rollout workers, reward actors, learners.

Each actor is started by the role's `start(i)` under the name `names[i]` and located (node, process) once it
answers `where`; every error names it that way (`labels`). One can be replaced (`restart`: rollout workers and
reward actors stand alone; learners form one process group and are never replaced one by one), all are killed
together (`shutdown`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from actors.remote import ActorCallError, gather, label


class ActorPool:
    def __init__(self, names: list[str], start: Callable[[int], Any], start_timeout_s: float,
                 error: type[ActorCallError]):
        """`start_timeout_s`: how long an actor may take to come up (an engine loads its model meanwhile);
        `error`: the role's ActorCallError, raised naming the actor that did not."""
        self.names, self._start, self._start_timeout_s, self._error = names, start, start_timeout_s, error
        self.actors: list[Any] = []
        self.actors.extend(start(i) for i in range(len(names)))  # one by one: a failed start leaves the rest to kill
        self.where = self._locate(self.actors, names)

    @property
    def labels(self) -> list[str]:
        """Each actor's name, node and process, as errors name it."""
        return [label(name, where) for name, where in zip(self.names, self.where, strict=True)]

    def restart(self, index: int) -> None:
        """Replace actor `index` (dead, hung or alive) by a fresh one of the same name."""
        import ray

        ray.kill(self.actors[index], no_restart=True)
        self.actors[index] = self._start(index)
        (self.where[index],) = self._locate([self.actors[index]], self.names[index:index + 1])

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def _locate(self, actors: Sequence[Any], names: Sequence[str]) -> list[tuple[str, int]]:
        return gather([a.where.remote() for a in actors], names, "start", self._start_timeout_s, self._error)
