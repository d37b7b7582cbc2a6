"""Stage 4: the GPU test files under pytest, with whatever time the earlier stages left.

One pytest session over ``FILES`` with a plugin that orders the tests (the big accuracy matrix, whose
core stage 1 already ran, and the long sequences last) and writes one record per test to tests.jsonl as
each finishes, so a session killed at the time limit keeps what it ran; it also ends the session between
tests once the next one would not finish in the budget (the junit XML, tests.xml, is then still written).
"""

from __future__ import annotations

import sys

import pytest

from benchmarks.gpu import common

FILES = ("tests/test_cuda_backend.py", "tests/test_cuda_modules.py", "tests/test_triton_cuda.py")
LAST = ("test_matches_fp64_within_torch_nn_error", "test_long_sequence")  # in this order, after the rest
RESERVE_S = 10.0  # the session's own end: summary and junit XML
# Tests that need no GPU (they compile for sm_90 offline) and run in every CPU test run: not worth this
# stage's minute.
DESELECT = "not compile_for_sm90"


def function_of(nodeid: str) -> str:
    """'tests/x.py::test_y[a-b]' -> 'test_y'."""
    return nodeid.split("::")[-1].split("[")[0]


def rank(name: str) -> int:
    """Where a test function goes: 0 for most, then LAST's order."""
    return 1 + LAST.index(name) if name in LAST else 0


class Recorder:
    """pytest plugin: ordering, one record per test, and the budget."""

    def __init__(self, writer: common.ResultWriter | None, budget: common.Budget):
        self.writer, self.budget = writer, budget
        self.session = None
        self.items: list = []
        self.done: set[str] = set()
        self.longest: dict[str, float] = {}
        self.stopped: str | None = None

    def pytest_sessionstart(self, session):
        self.session = session

    @pytest.hookimpl(trylast=True)  # after -k has deselected: the items that will run
    def pytest_collection_modifyitems(self, session, config, items):
        items.sort(key=lambda item: rank(function_of(item.nodeid)))
        self.items = list(items)

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.skipped or (report.failed and report.when != "call"):
            if self.writer is not None:
                self.writer.write(
                    {
                        "kind": "test",
                        "nodeid": report.nodeid,
                        "when": report.when,
                        "status": {"passed": "pass", "failed": "fail", "skipped": "skipped"}[report.outcome],
                        "seconds": round(report.duration, 3),
                        "why": None if report.passed else str(report.longrepr)[-3000:],
                    }
                )
        if report.when == "call":
            name = function_of(report.nodeid)
            self.longest[name] = max(self.longest.get(name, 0.0), report.duration)
        if report.when == "teardown":
            self.done.add(report.nodeid)
            self._check_budget()

    def _check_budget(self) -> None:
        """Ends the session here when the next test would not finish in the budget: the longest run of
        its function so far, else of any test, else 5 s."""
        nxt = next((i for i in self.items if i.nodeid not in self.done), None)
        if nxt is None or self.session is None:
            return
        longest = self.longest.get(function_of(nxt.nodeid), max(self.longest.values(), default=5.0))
        if not self.budget.allows(RESERVE_S + longest):
            self.stopped = f"stage budget: {max(self.budget.left(), 0):.0f} s left"
            self.session.shouldstop = self.stopped

    def pytest_sessionfinish(self, session, exitstatus):
        if self.writer is None:
            return
        left = [i.nodeid for i in self.items if i.nodeid not in self.done]
        self.writer.write(
            {
                "kind": "session",
                "status": "ok" if not self.stopped else "cut",
                "why": self.stopped,
                "exitstatus": int(exitstatus),
                "collected": len(self.items),
                "not_run": len(left),
                "not_run_first": left[:50],
            }
        )


def pytest_args(junit: str | None) -> list[str]:
    args = [*FILES, "-k", DESELECT, "-q", "-rfEs", "--tb=short", "-p", "no:cacheprovider"]
    return args + ([f"--junitxml={junit}", "-o", "junit_family=xunit2"] if junit else [])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = common.parser(__doc__, budget_s=60).parse_args(argv)
    budget = common.budget_from_args(args)
    if args.dry_run:
        recorder = Recorder(None, budget)
        rc = pytest.main(
            [*FILES, "-k", DESELECT, "--collect-only", "-qq", "-p", "no:cacheprovider"], plugins=[recorder]
        )
        by_rank = [sum(1 for i in recorder.items if rank(function_of(i.nodeid)) == r) for r in (0, 1, 2)]
        print(f"benchmarks.gpu.pytests: {len(recorder.items)} tests in {len(FILES)} files, in this order:")
        print(f"   {by_rank[0]} others, then {by_rank[1]} {LAST[0]}, then {by_rank[2]} {LAST[1]}")
        return 0 if rc == 0 and recorder.items else 1
    ctx = common.Context.from_args("pytests", args)
    recorder = Recorder(ctx.writer("tests"), budget)
    rc = pytest.main(pytest_args(str(ctx.out / common.OUTPUT_FILES["junit"])), plugins=[recorder])
    # Failed tests (1) and a session ended by the budget (2) are results, in the records; other codes
    # (no tests, a usage or internal error) mean the stage itself broke.
    return 0 if rc in (0, 1, 2) else int(rc)


if __name__ == "__main__":
    sys.exit(main())
