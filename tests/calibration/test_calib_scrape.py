"""What the calibration reads off the server's /metrics: histograms, per model, defaults."""

from __future__ import annotations

import pytest

from clipperlab.calibration.scrape import defaults_note, in_situ, parse

_BEFORE = """\
# HELP clipperlab_batch_size batch size
clipperlab_batch_size_sum{model="forest",version="1"} 100.0
clipperlab_batch_size_count{model="forest",version="1"} 10.0
clipperlab_batch_latency_seconds_sum{model="forest",version="1"} 0.025
clipperlab_batch_latency_seconds_count{model="forest",version="1"} 10.0
clipperlab_query_latency_seconds_sum{app="digits"} 0.5
clipperlab_query_latency_seconds_count{app="digits"} 100.0
clipperlab_defaults_total{app="digits",reason="shed_predicted_late"} 3.0
"""
_AFTER = """\
clipperlab_batch_size_sum{model="forest",version="1"} 1100.0
clipperlab_batch_size_count{model="forest",version="1"} 40.0
clipperlab_batch_latency_seconds_sum{model="forest",version="1"} 0.115
clipperlab_batch_latency_seconds_count{model="forest",version="1"} 40.0
clipperlab_query_latency_seconds_sum{app="digits"} 5.5
clipperlab_query_latency_seconds_count{app="digits"} 1100.0
clipperlab_defaults_total{app="digits",reason="shed_predicted_late"} 33.0
clipperlab_defaults_total{app="other",reason="shed_predicted_late"} 10.0
clipperlab_defaults_total{app="digits",reason="deadline"} 5.0
clipperlab_defaults_total{app="digits",reason="shed_hopeless"} 0.0
"""


def test_in_situ_reads_means_per_model_counts_and_defaults_per_reason() -> None:
    """Between two scrapes: the means over the run, the model's batches and items, and
    the defaults per reason summed over applications; the note gives each as a share of
    the run's queries, most first, and says nothing when there were none."""
    seen = in_situ(parse(_BEFORE), parse(_AFTER))
    assert seen["batches"] == 30 and seen["queries"] == 1000
    assert seen["batch_size_mean"] == pytest.approx(1000 / 30)
    assert seen["batch_mean_ms"] == pytest.approx(3.0)
    assert seen["server_mean_ms"] == pytest.approx(5.0)
    assert (seen["batches:forest"], seen["items:forest"]) == (30, 1000)
    assert seen["defaults:shed_predicted_late"] == 40  # 30 more for digits, 10 for other
    assert seen["defaults:deadline"] == 5 and seen["defaults:shed_hopeless"] == 0
    assert defaults_note(seen, 1000) == (
        ", defaults 4.5%: shed_predicted_late 4.0%, deadline 0.5%")
    assert defaults_note(in_situ(parse(_BEFORE), parse(_BEFORE)), 1000) == ""
