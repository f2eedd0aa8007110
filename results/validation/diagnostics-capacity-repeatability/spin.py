"""A SCHED_IDLE spinner pinned to core ARGV[1]: keeps the core busy and yields it at once
to any other process (``spinners.py``)."""

import os
import sys

os.sched_setaffinity(0, {int(sys.argv[1])})
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
while True:
    pass
