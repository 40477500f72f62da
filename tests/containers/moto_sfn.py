"""A moto server for Step Functions tests, with one fix to moto 5.2.5's state machine engine.

moto's Step Functions parser leaves ``_normalise_parameters`` and ``_normalise_response`` of
its service integrations empty, so ``batch:submitJob(.sync)`` fails on the PascalCase
parameters AWS requires (``KeyError: 'JobName'``; ``.sync`` also adds ``ContainerOverrides``)
and returns camelCase results where AWS returns PascalCase ones. Here both are filled in for
the Batch integration with the helpers moto's parser already has (``_to_boto_request``,
``_from_boto_response``), as AWS documents the mapping. Nothing else changes.

    python tests/containers/moto_sfn.py -H 127.0.0.1 -p PORT      (as moto_server)
"""

from __future__ import annotations

import sys
from typing import Any

import boto3
from moto.server import main
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
    state_task_service_batch as batch,
)


def _operation(self: Any, service_action_name: str | None) -> Any:
    model = boto3.session.Session().client("batch", region_name="us-east-1").meta.service_model
    action = self._get_boto_service_action(service_action_name)
    return model.operation_model("".join(part.title() for part in action.split("_")))


def _normalise_parameters(
    self: Any,
    parameters: dict[str, Any],
    boto_service_name: str | None = None,
    service_action_name: str | None = None,
) -> None:
    shape = _operation(self, service_action_name).input_shape
    if shape is not None:
        self._to_boto_request(parameters, shape)


def _normalise_response(
    self: Any,
    response: Any,
    boto_service_name: str | None = None,
    service_action_name: str | None = None,
) -> None:
    shape = _operation(self, service_action_name).output_shape
    if shape is not None:
        self._from_boto_response(response, shape)


batch.StateTaskServiceBatch._normalise_parameters = _normalise_parameters
batch.StateTaskServiceBatch._normalise_response = _normalise_response

if __name__ == "__main__":
    sys.exit(main())
