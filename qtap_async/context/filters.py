"""Config filters on container and pod metadata: `tap.filters.containers`, e.g. skip a namespace.

    tap:
      filters:
        containers:
          - pod_namespace: kube-system        # every field given must match; shell-style patterns (fnmatch)
          - container_image: "*/pause:*"
          - labels: {team: infra}

A connection of a matching container is ignored entirely, like a process filter. The metadata comes from the
container cache, which never waits for the runtime: the connections a new container makes before its lookup
answered (usually milliseconds) are decided on its id alone and so are captured.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import msgspec

from qtap_async.context.containers import ContainerInfo


class ContainerFilterConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    container_name: str | None = None
    container_image: str | None = None
    pod_name: str | None = None
    pod_namespace: str | None = None
    labels: dict[str, str] = {}

    def __post_init__(self) -> None:
        if not (self.container_name or self.container_image or self.pod_name or self.pod_namespace or self.labels):
            # msgspec reports this as a validation error at the filter's path
            raise ValueError("a container filter needs at least one of container_name, container_image, pod_name, "
                             "pod_namespace, labels")


def _match(pattern: str | None, value: str) -> bool:
    return pattern is None or fnmatchcase(value, pattern)


class ContainerFilter:
    __slots__ = ("filters",)

    def __init__(self, filters: list[ContainerFilterConfig]) -> None:
        self.filters = list(filters)

    def __bool__(self) -> bool:
        return bool(self.filters)

    def ignores(self, info: ContainerInfo | None) -> bool:
        if info is None:
            return False
        for f in self.filters:
            if (_match(f.container_name, info.name) and _match(f.container_image, info.image)
                    and _match(f.pod_name, info.pod_name) and _match(f.pod_namespace, info.pod_namespace)
                    and all(k in info.labels and fnmatchcase(info.labels[k], v) for k, v in f.labels.items())):
                return True
        return False
