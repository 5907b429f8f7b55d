"""Peak resident memory of every test and every test file, as a pytest plugin.

Usage: PYTHONPATH=benchmarks python -m pytest -p suite_memory -q -p no:cacheprovider tests/...
       [SUITE_MEMORY_OUT=benchmarks/results/test_memory.md]

Before each test the process's peak resident set is reset (``5`` written to
/proc/self/clear_refs, Linux); after it, ``VmHWM`` of /proc/self/status is that test's peak,
everything the worker still holds included (module fixtures, cached graphs). A file's peak is its
largest test's: what one pytest-xdist worker needs to run it. The table lists files by peak, and
the five largest tests.
"""
import os
import pathlib

_peaks = {}


def _hwm_mb() -> float:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pytest_runtest_setup(item):
    pathlib.Path("/proc/self/clear_refs").write_text("5")


def pytest_runtest_teardown(item, nextitem):
    _peaks[item.nodeid] = _hwm_mb()


def pytest_sessionfinish(session, exitstatus):
    if not _peaks:
        return
    files = {}
    for nodeid, peak in _peaks.items():
        path = nodeid.split("::")[0]
        files[path] = max(files.get(path, 0.0), peak)
    lines = ["| test file | peak MB | tests |", "|---|---:|---:|"]
    for path, peak in sorted(files.items(), key=lambda item: -item[1]):
        count = sum(1 for nodeid in _peaks if nodeid.split("::")[0] == path)
        lines.append(f"| {path} | {peak:.0f} | {count} |")
    lines += ["", "| largest tests | peak MB |", "|---|---:|"]
    for nodeid, peak in sorted(_peaks.items(), key=lambda item: -item[1])[:5]:
        lines.append(f"| {nodeid} | {peak:.0f} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    out = os.environ.get("SUITE_MEMORY_OUT")
    if out:
        with open(out, "a") as handle:
            handle.write(text)
