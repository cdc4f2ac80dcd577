"""Where the tests find the repository and their own data, from any folder under tests/."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
DATA = TESTS / "data"
SNAPSHOTS = TESTS / "snapshots"
SWEEP_BEFORE_MOVE = DATA / "sweep_before_move"  # a sweep written by main at c93933a, before platform/ had subpackages
