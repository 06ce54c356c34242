"""E2E fixtures: the local test control plane (scripts/k8s) for the whole session.

``k8s_cluster`` reuses a healthy running cluster (``make cluster-up``) or starts one and stops it
at the end; ``kubectl`` runs the real kubectl against it; ``namespace`` is a fresh namespace per
test. Helpers for other e2e tests live in :mod:`tests.e2e.k8s`.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from typing import Protocol

import pytest

from tests.e2e.k8s import Cluster, ClusterError, cluster_session, ensure_tools, tools_present

_build_error: list[str] = []


class Kubectl(Protocol):
    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]: ...


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the pinned binaries before any e2e test runs.

    A cold build takes many minutes; doing it here keeps it outside the per-test timeout. When
    the binaries are cached this costs nothing.
    """
    if not any(item.get_closest_marker("e2e") for item in session.items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and not tools_present():
        reporter.write_line("building the test control plane binaries (scripts/k8s/build.sh)...")
    try:
        ensure_tools()
    except ClusterError as exc:
        _build_error.append(str(exc))


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[Cluster]:
    """The running test control plane (reused if already up; stopped only if started here)."""
    if _build_error:
        pytest.fail(f"cannot build the test control plane: {_build_error[0]}", pytrace=False)
    try:
        with cluster_session() as cluster:
            yield cluster
    except ClusterError as exc:
        pytest.fail(f"cannot start the test control plane: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def kubectl(k8s_cluster: Cluster) -> Kubectl:
    """``kubectl(*args, input=None, check=True)`` against the test cluster."""
    return k8s_cluster.kubectl


@pytest.fixture
def namespace(k8s_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A unique namespace for one test, deleted afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower())
    with k8s_cluster.namespace(f"e2e-{slug[:30].strip('-')}") as name:
        yield name
