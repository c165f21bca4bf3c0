"""The Podman API service (podman.socket), through the `podman` bindings.

Used for what is not a task: image queries, per-task networks, and clean-up of what
a crash left behind. The task itself stays a `podman run` inside its unit, so its
cgroup is the unit's. One short-lived client per call: the calls are rare and the
socket-activated service may have gone idle in between.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Callable

from podman import PodmanClient
from podman.errors import APIError, ImageNotFound, NotFound

from airut_runner.images import LABEL, epoch

logger = logging.getLogger("airut.runner.podman")

PODMAN_SOCKET = "unix:///run/podman/podman.sock"
TASK_LABEL = "airut.task"


class Podman:
    """The few Podman API calls the runner makes; one short-lived client per call."""

    def __init__(self, base_url: str = PODMAN_SOCKET):
        self.base_url = base_url

    def client(self) -> PodmanClient:
        return PodmanClient(base_url=self.base_url)

    def image_created(self, tag: str) -> float | None:
        """When the image was built (epoch seconds), None if there is no such image."""
        with self.client() as c:
            try:
                created = c.images.get(tag).attrs.get("Created")
            except (ImageNotFound, NotFound):
                return None
        return epoch(created)

    def create_network(self, name: str, task: str, subnet: Callable[[], str] | None = None,
                       ) -> str:
        """The task's own network (idempotent): its bridge has the task as only port.

        With `subnet` (called only when the network is new) the network is internal,
        without podman's DNS: the sandbox. Returns the gateway address, which is this
        host as seen from the task.
        """
        with self.client() as c:
            if c.networks.exists(name):
                network = c.networks.get(name)
            elif subnet:
                cidr = subnet()
                gateway = str(next(ipaddress.ip_network(cidr).hosts()))
                network = c.networks.create(
                    name, internal=True, dns_enabled=False, labels={TASK_LABEL: task},
                    subnets=[{"subnet": cidr, "gateway": gateway}])
            else:
                network = c.networks.create(name, labels={TASK_LABEL: task})
        subnets = network.attrs.get("subnets") or [{}]
        return subnets[0].get("gateway", "")

    def task_subnets(self) -> set[str]:
        """Subnets of the task networks that exist now."""
        with self.client() as c:
            return {s.get("subnet") for n in c.networks.list(filters={"label": TASK_LABEL})
                    for s in n.attrs.get("subnets") or []}

    def remove_network(self, name: str) -> None:
        with self.client() as c, contextlib.suppress(NotFound):
            c.networks.get(name).remove(force=True)

    def remove_leftover_networks(self, keep: set[str]) -> list[str]:
        removed = []
        with self.client() as c:
            for network in c.networks.list(filters={"label": TASK_LABEL}):
                if network.name not in keep:
                    try:
                        network.remove(force=True)
                        removed.append(network.name)
                    except APIError as e:
                        logger.warning("cannot remove leftover network %s: %s", network.name, e)
        return removed

    def remove_leftover_containers(self, keep: set[str]) -> list[str]:
        """airut's task containers (by label) that no running task owns (a crash's
        leftovers); nobody else's containers are touched."""
        removed = []
        with self.client() as c:
            for container in c.containers.list(all=True, filters={"label": TASK_LABEL}):
                names = container.attrs.get("Names") or [container.attrs.get("Name") or ""]
                name = names[0].lstrip("/")
                if name not in keep:
                    try:
                        container.remove(force=True)
                        removed.append(name)
                    except APIError as e:
                        logger.warning("cannot remove leftover container %s: %s", name, e)
        return removed

    def container_upper_dir(self, name: str) -> str | None:
        """Where the container's own writes land (its overlay upper directory)."""
        with self.client() as c:
            try:
                attrs = c.containers.get(name).attrs
            except NotFound:
                return None
        data = (attrs.get("GraphDriver") or {}).get("Data") or {}
        upper = data.get("UpperDir")
        return upper if isinstance(upper, str) and upper.startswith("/") else None

    def prune_images(self, keep: set[str]) -> list[str]:
        """Remove airut's own repository images (by label) not in keep and not used by a
        container, and airut's dangling ones; nothing else on the host is touched."""
        removed = []
        with self.client() as c:
            for image in c.images.list(filters={"label": LABEL}):
                tags = set(image.tags or [])
                if tags & keep:
                    continue
                try:
                    c.images.remove(image.id)
                    removed.extend(sorted(tags) or [image.short_id])
                except APIError:
                    continue  # in use by a container: keep it
            c.images.prune(filters={"label": LABEL})
        return removed
