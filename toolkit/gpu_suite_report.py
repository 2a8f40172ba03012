"""A pytest plugin for the GPU suite run by scripts/gpu-check (``-p toolkit.gpu_suite_report``): a failing
test's reason is printed the moment it fails, as one line ``GPU-SUITE-FAILURE <node id> :: <message>
[file:line]``, so that the check keeps the reasons of a suite killed at its time budget (pytest prints its
failure sections only at the end of the session)."""

from __future__ import annotations

_config = None


def pytest_configure(config):
    global _config
    _config = config


def failure_line(report) -> str:
    """The one line for a failed test report: the crash message (first 6 lines joined, 600 characters at
    most) and the file and line where it was raised."""
    crash = getattr(report.longrepr, "reprcrash", None)
    lines = (crash.message if crash is not None else str(report.longrepr)).strip().splitlines() or [""]
    where = f" [{str(crash.path).rsplit('/', 1)[-1]}:{crash.lineno}]" if crash is not None else ""
    return f"GPU-SUITE-FAILURE {report.nodeid} :: " + " | ".join(x.strip() for x in lines[:6])[:600] + where


def pytest_runtest_logreport(report):
    if not report.failed:
        return
    reporter = _config.pluginmanager.get_plugin("terminalreporter") if _config is not None else None
    if reporter is not None:
        reporter.write_line(failure_line(report))
    else:
        print(failure_line(report), flush=True)
