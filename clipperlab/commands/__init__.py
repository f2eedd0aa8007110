"""The CLI's subcommands, one module each: ``add_arguments(parser)`` and ``run(args) -> int``.

A command checks its arguments, calls into ``clipperlab.engine``/``simulator``/``real``/
``calibration``/``experiments``, and turns their errors into ``clipperlab.errors.CLIError``
(one line on stderr, exit code 2)."""
