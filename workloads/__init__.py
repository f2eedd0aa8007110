"""Workloads: when queries arrive, what they carry, and what is fed back.

One seeded spec object drives both the simulator and (later) the real load generator::

    from clipperlab.workloads import ConstantRate, DigitsInputs, Workload

    w = Workload(ConstantRate(20_000), n_queries=100_000, inputs=DigitsInputs(binary=True))
    trace = w.generate(seed=1)          # numpy arrays: arrival_at, input_index, label, ...
    w.input_bytes                       # 512 (64 float64 features per digit)

Arrival processes (``clipperlab.workloads.arrivals``): ``ConstantRate(qps)`` (the paper's),
``Poisson(qps)``, ``Gamma(qps, cv)``, ``MMPP(rates_qps, mean_dwell_s)`` (bursts),
``TraceReplay(csv_path, column, time_scale)``.
Inputs (``clipperlab.workloads.inputs``): ``DigitsInputs(binary=True, positive_digit=3)`` (the
paper's
"is it a 3?" on scikit-learn's bundled digits), ``SyntheticTensors(shape, dtype)``.
Extras: ``FeedbackStream(fraction, delay_s)``, ``UserContexts(n_users, zipf_a)``.
Config tables: ``Workload.from_dict`` / ``to_dict`` (keys in ``clipperlab.workloads.config``).
Every bad parameter raises ``WorkloadError`` naming the field and the rule.
"""

from .arrivals import MMPP, ArrivalProcess, ConstantRate, Gamma, Poisson, TraceReplay
from .errors import WorkloadError
from .inputs import DigitsInputs, InputSource, SyntheticTensors
from .spec import FeedbackStream, Trace, UserContexts, Workload

__all__ = [
    "MMPP",
    "ArrivalProcess",
    "ConstantRate",
    "DigitsInputs",
    "FeedbackStream",
    "Gamma",
    "InputSource",
    "Poisson",
    "SyntheticTensors",
    "Trace",
    "TraceReplay",
    "UserContexts",
    "Workload",
    "WorkloadError",
]
