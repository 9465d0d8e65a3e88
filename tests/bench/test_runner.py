"""``make bench``'s runner: it finds each benchmark's figures in what it printed, knows every
benchmark module under bench/, and marks targets met or missed without inventing figures."""

from __future__ import annotations

from bench.__main__ import (
    BENCHES,
    Bench,
    Outcome,
    last_json,
    markdown,
    run_one,
    summarize,
    unlisted,
)


def test_the_last_json_object_is_found_on_one_line_or_indented() -> None:
    one_line = 'progress\n{"bench": "x", "ratio": 0.9}\n'
    indented = 'table\n{"early": 1}\n{\n  "ratio": 0.5,\n  "nested": {"a": 1}\n}\n'
    assert last_json(one_line) == {"bench": "x", "ratio": 0.9}
    assert last_json(indented) == {"ratio": 0.5, "nested": {"a": 1}}
    assert last_json("no figures here\n") is None


def test_every_benchmark_module_is_listed() -> None:
    # a new bench/*.py that the runner does not run would silently drop out of make bench
    assert unlisted() == []
    assert len({b.name for b in BENCHES}) == len(BENCHES)


def test_targets_are_marked_from_the_figures_only() -> None:
    outcomes = {
        "e2e": Outcome(
            "e2e",
            1.0,
            figures={
                "entries_per_second_per_process": 1200.0,
                "ratio_to_ideal": 0.5,
                "requests_per_entry": 0.05,
            },
        ),
        "scale": Outcome("scale", 1.0, error="exit 2, printed no JSON object"),
    }
    summary = summarize(outcomes)
    assert summary["e2e.entries_per_second_per_process"]["met"] is True
    assert summary["e2e.ratio_to_ideal"]["met"] is False
    assert summary["e2e.requests_per_entry"]["met"] is True
    # a benchmark that failed has no figure: not measured, neither met nor missed
    assert summary["scale.peak_rss_mb"] == {"value": None, "target": "< 300", "met": None}
    table = markdown(outcomes, summary)
    assert "| `e2e.ratio_to_ideal` | 0.5 | >= 0.8 | **no** |" in table
    assert "| scale | 1 | exit 2, printed no JSON object |" in table


def test_a_benchmark_that_prints_no_figures_is_a_failure() -> None:
    outcome = run_one(Bench("missing", "bench.no_such_module", timeout=60), quick=False)
    assert outcome.figures is None
    assert outcome.error is not None
    assert "printed no JSON object" in outcome.error
    assert any("No module named" in line for line in outcome.log_tail)
