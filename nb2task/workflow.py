"""The Cirrus workflow around a task: a FilmDrop workflow definition and its Amazon States
Language state machine, written by ``nb2task build`` into ``workflows/``.

``<task>-lambda`` is one Task state on the task's Lambda function; ``<task>-batch`` is
Cirrus' pre-batch → ``batch:submitJob.sync`` → post-batch triad in a Parallel state, with
the Retry and Catch policy of Cirrus' docs (no retry of ``InvalidInput``, which never
becomes valid). Both end in a Fail state carrying the error and its cause, as Cirrus'
update-state step reads them. Resources are FilmDrop's ``${...}`` variables; ``fill``
puts real ARNs in their place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .render import render

WORKFLOWS_DIR = "workflows"
RUNTIMES = ("lambda", "batch")
_VARIABLE = re.compile(r"\$\{([A-Za-z0-9_.-]+)\}")


def write_workflows(context: Path, values: dict[str, Any]) -> list[Path]:
    """Write ``workflows/<task>-<runtime>/`` (definition.yaml, state-machine.json) into a
    build context, for each runtime the task is enabled for; the folders written."""
    written = []
    for runtime in RUNTIMES:
        if not values[runtime].enabled:
            continue
        workflow = f"{values['name']}-{runtime}"
        folder = context / WORKFLOWS_DIR / workflow
        folder.mkdir(parents=True)
        values_here = {**values, "workflow": workflow, "runtime": runtime}
        # Parsed and dumped again: the template must be JSON, and the file reads well.
        machine = json.loads(render(f"state-machine.{runtime}.json.j2", values_here))
        (folder / "state-machine.json").write_text(
            json.dumps(machine, indent=2) + "\n", encoding="utf-8"
        )
        (folder / "definition.yaml").write_text(
            render("workflow-definition.yaml.j2", values_here), encoding="utf-8"
        )
        written.append(folder)
    return written


def variables(state_machine: str) -> set[str]:
    """The FilmDrop variables a state machine uses (``tasks.<name>.lambda.function_arn``)."""
    return set(_VARIABLE.findall(state_machine))


def fill(state_machine: str, values: Mapping[str, str]) -> str:
    """The state machine with its FilmDrop variables replaced, as FilmDrop deploys it
    (e.g. for ``aws stepfunctions create-state-machine`` without FilmDrop)."""
    missing = variables(state_machine) - set(values)
    if missing:
        raise KeyError(f"no value for {', '.join(sorted(missing))}")
    return _VARIABLE.sub(lambda m: values[m.group(1)], state_machine)
