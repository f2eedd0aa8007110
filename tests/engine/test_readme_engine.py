"""The README's engine example runs as printed."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_engine_example_runs(capsys: object) -> None:
    text = README.read_text()
    section = text.split("## The engine", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code, "the engine section has no python example"
    namespace: dict[str, object] = {}
    exec(compile(code.group(1), "README.md", "exec"), namespace)  # noqa: S102
    late = namespace["late"]
    assert late.prediction.default  # type: ignore[attr-defined]
    reply = namespace["reply"]
    assert reply.prediction.output == 3  # type: ignore[attr-defined]
