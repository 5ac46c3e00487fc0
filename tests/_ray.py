"""A local Ray cluster for the tests: ``ray.cluster_utils.Cluster`` on this machine, a head with
no CPUs (so every task runs on a worker node, as on a real cluster) and worker nodes of 1 CPU.

Nodes are declared dead after ~1.5 s without a heartbeat (Ray's default is ~15 s), so a test that
removes a node pays for Ray's retry, not for its patience. The driver (this pytest process) is
connected while the fixture lives; worker processes are reused by every test of the module.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 300, "health_check_failure_threshold": 5}


def start_cluster(workers: int = 2, gpus: int = 0) -> Any:
    """A connected local cluster: a 0-CPU head and ``workers`` nodes of 1 CPU each, the first
    declaring ``gpus`` logical GPUs (Ray schedules on them; torch sees no CUDA device)."""
    import ray  # the dev extra installs ray[data]; missing -> the test errors, never skips
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": HEALTH},
    )
    for i in range(workers):
        cluster.add_node(num_cpus=1, num_gpus=gpus if i == 0 else 0)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    cluster.wait_for_nodes()
    return cluster


def stop_cluster(cluster: Any) -> None:
    import ray

    ray.shutdown()
    cluster.shutdown()


def cluster_fixture(workers: int = 2, gpus: int = 0) -> Iterator[Any]:
    cluster = start_cluster(workers, gpus)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


def worker_nodes(cluster: Any) -> list[Any]:
    """The cluster's live worker nodes (not the head)."""
    return list(cluster.worker_nodes)
