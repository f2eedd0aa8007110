"""Calibration: measure the real system and check the simulated twin against it.

It joins ``clipperlab.real`` (the server, its containers and client) to
``clipperlab.simulator`` (the twin); neither of those imports it.  Map, one job a module:

- ``errors``: ``CalibrationError``, the one to catch, and each tool's subclass.
- ``quiet``: the machine's load before a measurement (``machine_load``) and the guard
  that warns, refuses or stays off when it is busy (``guard``); results record it.
- ``intervals``: bootstrap intervals over the runs or repeats a fitted number came from.
- ``capacity``: the capacity ramp (``ramp``), one procedure for the real server and the
  twin (the twin's run of it is the predicted capacity).
- ``profiler``: a real container's batch latency over the RPC -> a simulator profile.
- ``loadgen``: an open-loop load generator without coordinated omission; raw per-query
  tables (summaries come from ``clipperlab.report.latency.summarise``).
- ``validation``: the sim-vs-real procedure (``clipperlab validate``), one function a
  step; the jobs it drives each have a module:
  - ``server``: the real deployment (``deploy.toml``) and the server in its own process;
  - ``scrape``: what the server saw, from its ``/metrics``;
  - ``runs``: one run on each side (re-timed trace, real run, twin replay);
  - ``twin``: the simulated twin of a real deployment;
  - ``fit``: the calibration (``Calibration``) and its fits from the real runs;
  - ``outputs``: errors, tables (``clipperlab.report.tables``), the figure
    (``clipperlab.report.plots``) and files.
- ``fidelity``: the fidelity table over several models and batchings.
- ``resimulate``: a fidelity run's simulator side again over its stored real side
  (``fidelity --resimulate``).
- ``torch_models``: the torch models of fig. 11 and the calibration runs, built offline.
- ``rayserve``: Ray Serve serving the same models (fig. 11's peer).
"""
