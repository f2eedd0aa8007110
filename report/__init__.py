"""Reporting in one style: tables, figures and latency summaries.

Every room that shows numbers uses these (the CLI's commands, the simulator's summaries,
calibration's reports, the experiments' figures), so a table, a plot and a p99 look and
mean the same everywhere.  Depends on numpy, pandas, matplotlib and tqdm only; the engine
never imports it.

- ``tables``: ``fmt`` (one number format), ``text_table`` (aligned plain text for a
  terminal) and ``markdown_table`` (GitHub markdown for ``summary.md`` and the README).
- ``plots``: matplotlib on the Agg backend, one look: ``grid``, ``style_axis``, ``save``,
  ``COLORS``.
- ``latency``: ``pct``, ``latency_ms`` (mean/p50/p90/p99/max in ms of a latency array) and
  ``summarise`` (throughput, latency, defaults of a per-query table: the definitions the
  simulator, the load generator and the validation share).
- ``progress``: ``bars`` and ``track``, progress bars for long runs (tqdm), off unless a
  command turns them on.
"""
