"""`ranktune sweep --address`: the driver and every Ray node run the same ranktune, Ray, torch and Python."""

from __future__ import annotations

import dataclasses

import pytest

from ranktune.platform.sweep import versions
from ranktune.platform.sweep.versions import NodeVersions, version_mismatches
from ranktune.trainables.config import ConfigError

DRIVER = NodeVersions("head (10.0.0.1)", "3.11.7", "0.1.0 (source abc)", "2.60.0", "2.13.0")


def test_a_mismatched_node_is_named_with_each_difference():
    same = dataclasses.replace(DRIVER, node="gpu1 (10.0.0.2)")
    stale = dataclasses.replace(DRIVER, node="gpu2 (10.0.0.3)", torch="2.12.1", python="3.12.1")
    assert version_mismatches(DRIVER, [same]) == []
    assert version_mismatches(DRIVER, [same, stale]) == [
        "ray node gpu2 (10.0.0.3): python 3.12.1 (driver: 3.11.7), torch 2.12.1 (driver: 2.13.0)"
    ]
    other_source = dataclasses.replace(DRIVER, node="gpu3", ranktune="0.1.0 (source def)")
    assert "ranktune 0.1.0 (source def) (driver: 0.1.0 (source abc))" in version_mismatches(DRIVER, [other_source])[0]


def test_local_versions_drop_the_torch_build_label():
    v = versions.local_versions("here")
    assert "+" not in v.torch and v.ranktune.startswith("0.1.0 (source ")
    assert len(versions.source_fingerprint()) == 12


@pytest.mark.slow  # starts a local Ray (tens of seconds on 2 busy cores)
def test_the_check_refuses_when_a_node_reports_other_versions(monkeypatch):
    """A real Ray node answers through the pinned task; the driver pretends to run another torch."""
    import ray

    ray.init(num_cpus=1, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        versions.check_cluster_versions()  # the one node is this machine: same versions
        real = versions.local_versions
        monkeypatch.setattr(
            versions, "local_versions", lambda node=None: dataclasses.replace(real(node), torch="0.0.1")
        )
        with pytest.raises(ConfigError) as err:
            versions.check_cluster_versions()
        (line,) = err.value.problems
        assert line.startswith("ray node ") and "torch " in line and "(driver: 0.0.1)" in line
        assert "run scripts/setup.sh on that node" in line
    finally:
        ray.shutdown()
