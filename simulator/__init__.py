"""The simulator: clipperlab's engine against SimPy-simulated model containers.

Nothing about batching, caching or selection is decided here; the driver feeds the engine
events with the simulated time and carries out its instructions.

Public API::

    from clipperlab.simulator import Deployment, Simulation, load_profile
    from clipperlab.workloads import ConstantRate, DigitsInputs, Workload
    from clipperlab.engine import BatchingConfig

    dep = Deployment.single("prototype-linear-svm", batching=BatchingConfig(policy="aimd"),
                            slo_s=0.020, replicas=1)
    wl = Workload(ConstantRate(20_000), n_queries=100_000, inputs=DigitsInputs())
    res = Simulation(dep, wl, seed=1, decision_log=False).run()
    res.summary()     # throughput_qps, mean_ms/p50_ms/p90_ms/p99_ms, default_rate,
                      # mean_batch_size, accuracy, missing_share, ...
    res.queries       # DataFrame: query_id, app, arrival_at, reply_at, latency_s, default,
                      # default_reason, refused, output, label, correct, n_missing,
                      # n_selected, input_index[, context][, models][, frontend]
    res.batches       # DataFrame: model, version, replica, batch_id, size, padded_size,
                      # reason, sent_at, start_at (the container started it), done_at,
                      # status ("done", "lost" to a crash, "sent" if the run was cut short)
                      # [, frontend: with Deployment(frontends=N > 1)]
    res.members       # with record_members=True: query_id, model, done_at per member
    res.metrics       # the engine's Metrics; res.log: the decision log (decision_log=True)
    res.engine        # the engine after the run (describe_model, probabilities, ...)
    res.engines       # one per frontend (Deployment.frontends; metrics and log: all)
    res.crashes       # [(time, "model:version#k", "crash"|"restart")]
    res.feedback      # [(time, FeedbackApplied)] for a workload with a feedback stream
    res.sim_s, res.wall_s
    res.summary_table()  # one row per application

``Simulation(deployment, workload, seed)`` also takes a generated ``workloads.Trace`` (e.g.
with edited arrival times) or a list of workloads/traces, one per application; query ids
are positions in the merged, time-ordered trace.  A workload's ``app`` must be one of the
deployment's applications (``Deployment.single`` names it ``"digits"`` by default, like
``Workload``).

Latency profiles (``clipperlab.simulator.profiles``): ``LatencyProfile`` (per batch size latency
quantiles; ``sample``, ``sampler(rng)``, ``mean_s``, ``quantile_s``, ``line_s``,
``from_line``, ``from_samples``), ``load_profile(name_or_path)``, ``save_profile``,
``list_profiles()``.  Shipped: ``prototype-*`` (the paper prototype's six fits),
``synthetic-convnet-gpu`` (assumed, for replica scaling), ``measured-*`` (this machine,
``python -m clipperlab.simulator.measure_profiles``).

Deployments (``clipperlab.simulator.deployment``): ``Deployment(apps=[AppDeployment(Application,
models)], models=[ModelDeployment(spec=ModelSpec, profile, replicas, hosts, kind, cpus,
gpus, outputs)], hosts=[Host(name, cpus, gpus, link=Link(bandwidth_bps, latency_s))],
frontend_link=Link|None, faults=[...], frontend_cpu=FrontendCPU(query_s, reply_s,
batch_send_s, batch_done_s, item_s)|None, host_cpu=HostCPU(cpus, frontend_host,
loadgen_host, loadgen_cpu_per_query_s, loadgen_wake_s, loadgen_replies, ...)|None)``
(the frontend's event loop as a CPU; the
hosts' cores shared by the loop, the containers and the generator, processor sharing,
off by default; a model's CPU per batch: ``ModelDeployment(cpu_per_batch_s,
cpu_per_item_s)``; after a run ``Simulation.cpu_busy_s`` gives each process's CPU time
and, with time slices, ``cpu_wait_s`` its time runnable without a core);
``Deployment.single(...)`` for one model;
``load_config(path) -> SimConfig(deployment, workload, seed)`` reads TOML/JSON (see
``examples/simulate.toml``).

Capacity (``clipperlab.simulator.capacity``): ``capacity(deployment, workload, slo_s=None,
attainment=0.99, seeds=(0, 1, 2), start_qps=None, rel_tol=0.02) -> CapacityResult(qps,
failed_qps, slo_s, attainment, seeds, steps)``: the highest rate (the workload's shape,
its rate scaled) at which at least ``attainment`` of the queries are answered in time and
not by default, by doubling then bisection over simulated runs.

Faults (``clipperlab.simulator.faults``): ``Crash(replica, at_s, restart_after_s)``,
``Straggler(replica, slowdown, extra_delay_s, probability, from_s, until_s)``,
``Degrade(model, from_query, to_query, accuracy)``.
Outputs (``clipperlab.simulator.outputs``): ``AccuracyOutputs(accuracy)``, ``ReplayOutputs(source,
task)`` (recorded predictions of real models), ``ConstantOutputs(value)``.
Errors: ``SimConfigError`` (``ProfileError`` for profiles) name the file, field and rule.
Command line: ``clipperlab simulate --config FILE``.
"""

from ._cpu import total_factor
from .capacity import CapacityResult, capacity
from .deployment import (
    AppDeployment,
    Deployment,
    FrontendCPU,
    Host,
    HostCPU,
    Link,
    ModelDeployment,
    SimConfig,
    config_from_dict,
    load_config,
)
from .driver import Simulation
from .errors import ProfileError, SimConfigError
from .faults import Crash, Degrade, Fault, Straggler
from .outputs import AccuracyOutputs, ConstantOutputs, OutputModel, ReplayOutputs
from .profiles import LatencyProfile, ProfileSampler, list_profiles, load_profile, save_profile
from .result import SimResult

__all__ = [
    "AccuracyOutputs",
    "AppDeployment",
    "CapacityResult",
    "ConstantOutputs",
    "Crash",
    "Degrade",
    "Deployment",
    "Fault",
    "FrontendCPU",
    "Host",
    "HostCPU",
    "LatencyProfile",
    "Link",
    "ModelDeployment",
    "OutputModel",
    "ProfileError",
    "ProfileSampler",
    "ReplayOutputs",
    "SimConfig",
    "SimConfigError",
    "SimResult",
    "Simulation",
    "Straggler",
    "capacity",
    "config_from_dict",
    "list_profiles",
    "load_config",
    "load_profile",
    "save_profile",
    "total_factor",
]
