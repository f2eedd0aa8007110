"""clipperlab experiments: the paper's figures, sweeps over them, and the command line.

Layout:
- ``cli``: the ``clipperlab`` command; one module per subcommand (``cmd_experiment``,
  ``cmd_sweep`` here; others in ``simulator/`` and ``real/``).
- ``framework``: what a figure module provides (``Config``, ``default_config``, ``run``,
  ``plot``, ``claims``), the registry ``EXPERIMENTS``, and the ``results/NAME/`` layout.
- ``config``: config dataclasses set from ``--set key=value`` text.
- ``sweep``: grids of config values x seeds on local processes or Ray.
- ``measures``, ``plotting``, ``parallel``: shared measures, figure style, process pools.
- ``_sim``: the one place the batching figures call the simulator.
- ``fig2``...: one module per figure of the paper.
"""
