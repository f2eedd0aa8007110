"""Replay files: a simulator latency profile as the real ``replay`` container reads it.

    python -m clipperlab.calibration.replay PROFILE OUT.json [--output 0]
        [--predictions TASK --inputs '{"kind": "digits", "binary": true}']

Rules:
- ``real/`` never imports the simulator (the layering test), so the ``replay`` model kind
  (``clipperlab.real.models``) reads a small self-contained JSON file instead of a
  profile: ``format = "clipperlab-replay/1"``, the profile's measured ``batch_sizes``,
  its quantile ``levels``, ``latency_s`` per size and its fitted line ``fit = [alpha_s,
  beta_s]`` (the simulator extrapolates with it).  The container samples it with the
  simulator's rule, so a replica draws its batch latencies from the same distribution as
  the simulated one (``tests/real/test_replay_container.py`` checks that).
- Outputs: ``output`` (a constant, default 0) and, with ``task``, the profile's recorded
  ``predictions[task]`` with the ``inputs`` source they were recorded on (the container
  looks an input up by its bytes; an input it does not know gets ``output``).
- This module may import both rooms (calibration joins them); the planner
  (``clipperlab.experiments.plan``) writes one file per model of a deployment it proposes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clipperlab.real.models import REPLAY_FORMAT
from clipperlab.simulator import LatencyProfile, ProfileError, load_profile

from .errors import CalibrationError

__all__ = ["main", "replay_spec", "write_replay"]


def replay_spec(profile: LatencyProfile, *, output: Any = 0, task: str | None = None,
                inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The replay file's content for ``profile`` (see the module's rules)."""
    assert profile.fit is not None
    spec: dict[str, Any] = {
        "format": REPLAY_FORMAT,
        "name": profile.name,
        "kind": profile.kind,
        "tags": dict(profile.tags),
        "batch_sizes": list(profile.batch_sizes),
        "levels": list(profile.levels),
        "latency_s": [list(r) for r in profile.latency_s],
        "fit": [float(profile.fit[0]), float(profile.fit[1])],
        "output": output,
    }
    if task is not None:
        preds = profile.predictions.get(task)
        if preds is None:
            raise CalibrationError(
                f"profile {profile.name!r} has no recorded predictions for task {task!r}; "
                f"it has {sorted(profile.predictions) or 'none'}"
            )
        spec["predictions"] = list(preds)
        spec["inputs"] = dict(inputs or {"kind": "digits"})
    return spec


def write_replay(profile: LatencyProfile | str, path: str | Path, **kw: Any) -> Path:
    """Write ``profile`` (or a profile name / path) as a replay file at ``path``."""
    if isinstance(profile, str):
        try:
            profile = load_profile(profile)
        except ProfileError as e:
            raise CalibrationError(str(e)) from None
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(replay_spec(profile, **kw), indent=1) + "\n")
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clipperlab.calibration.replay",
                                 description="write a simulator profile as a replay file")
    ap.add_argument("profile", help="a shipped profile name or a profile .json path")
    ap.add_argument("out", help="the replay file to write (.json)")
    ap.add_argument("--output", default="0",
                    help="the constant answer, JSON (default 0)")
    ap.add_argument("--predictions", default=None, metavar="TASK",
                    help="replay the profile's recorded predictions for TASK (default: none)")
    ap.add_argument("--inputs", default='{"kind": "digits"}',
                    help="the input source the predictions were recorded on, JSON "
                    "(default {\"kind\": \"digits\"})")
    args = ap.parse_args(argv)
    try:
        out = write_replay(args.profile, args.out, output=json.loads(args.output),
                           task=args.predictions, inputs=json.loads(args.inputs))
    except (CalibrationError, ValueError) as e:
        print(f"replay: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
