"""Pytest wiring of the conformance runner: languages, known-failing lists, the report table."""

from __future__ import annotations

import json
import os
import sys
import pathlib
from collections import defaultdict

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from cases import KnownFailing, load_cases  # noqa: E402
from testee import ROOT, available  # noqa: E402

LANGUAGES = ("python", "rust", "cpp")
_results: dict[str, dict[str, str]] = defaultdict(dict)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--langs",
        default=os.environ.get("CONFORMANCE_LANGS", "python"),
        help="comma-separated testee languages (python, rust, cpp); default $CONFORMANCE_LANGS or python",
    )


def selected_languages(config: pytest.Config) -> list[str]:
    langs = [lang.strip() for lang in config.getoption("--langs").split(",") if lang.strip()]
    unknown = sorted(set(langs) - set(LANGUAGES))
    if unknown:
        raise pytest.UsageError(f"unknown testee language(s): {', '.join(unknown)}")
    return langs


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    langs = selected_languages(metafunc.config)
    params = []
    for case in load_cases():
        for lang in langs:
            marks = []
            if case.languages is not None and lang not in case.languages:
                continue
            reason = KnownFailing.load(lang).reason(case.name)
            if reason is not None:
                marks.append(pytest.mark.xfail(reason=f"known failing: {reason}", strict=True))
            params.append(pytest.param(case, lang, id=f"{case.name}[{lang}]", marks=marks))
    metafunc.parametrize(("case", "language"), params)


@pytest.fixture(scope="session", autouse=True)
def _testees_built(request: pytest.FixtureRequest) -> None:
    missing = [f"{lang}: {why}" for lang in selected_languages(request.config) if (why := available(lang))]
    if missing:
        pytest.fail("testee not available:\n" + "\n".join(missing), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    callspec = getattr(item, "callspec", None)
    if callspec is None or "case" not in callspec.params:
        return
    name, lang = callspec.params["case"].name, callspec.params["language"]
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if hasattr(report, "wasxfail"):
            state = "known-fail" if report.skipped else "STALE"
        else:
            state = "pass" if report.passed else ("skip" if report.skipped else "FAIL")
        _results[name][lang] = state


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if not _results:
        return
    langs = [lang for lang in LANGUAGES if any(lang in row for row in _results.values())]
    width = max(len(name) for name in _results)
    lines = [f"{'case':<{width}}  " + "  ".join(f"{lang:<10}" for lang in langs)]
    for name in sorted(_results):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{_results[name].get(lang, '-'):<10}" for lang in langs))
    totals = []
    for lang in langs:
        states = [row.get(lang) for row in _results.values() if lang in row]
        totals.append(f"{lang}: {states.count('pass')}/{len(states)} pass")
    lines.append("; ".join(totals))
    out = ROOT / "build" / "conformance"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.txt").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps(_results, indent=1, sort_keys=True) + "\n")
    terminalreporter.write_sep("=", "conformance: case x language")
    for line in lines:
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"(written to {out / 'report.txt'} and report.json)")
