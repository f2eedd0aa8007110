"""clipperlab experiments: the paper's figures and sweeps over them.

The commands that run them (``clipperlab experiment``, ``clipperlab sweep``) live with the
CLI in ``clipperlab.commands``.

Layout:
- ``framework``: what a figure module provides (``Config``, ``default_config``, ``run``,
  ``plot``, ``claims``), the registry ``EXPERIMENTS``, and the ``results/NAME/`` layout.
- ``config``: config dataclasses set from ``--set key=value`` text.
- ``sweep``: grids of config values x seeds on local processes or Ray.
- ``measures``: shared measures (figure style, tables and latency summaries:
  ``clipperlab.report``; progress bars: ``report.progress``; process pools over
  simulations: ``simulator.parallel``, which calibration's twin runs share).
- ``_sim``: the one place the batching figures call the simulator.
- ``fig2``...: one module per figure of the paper.
"""
