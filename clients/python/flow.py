"""The core API flow, run with the client openapi-python-client generates
from openapi.yaml (CI: .ci/clients). Uses only the generated, typed API.

Usage: STEPWISE_URL=http://127.0.0.1:8080 STEPWISE_TOKEN=... \
       PYTHONPATH=DIR_WITH_stepwise_client python3 flow.py

Prints each check; exits non-zero at the first that fails.
"""

import copy
import json
import os
import sys
import time
import uuid
from pathlib import Path

import httpx

from stepwise_client import AuthenticatedClient
from stepwise_client.api.callbacks import report_callback_success
from stepwise_client.api.executions import (
    describe_execution,
    list_executions,
    plan_execution,
    retry_execution,
    start_execution,
    stop_execution,
)
from stepwise_client.api.pipelines import create_pipeline, describe_pipeline, purge_cache, update_pipeline
from stepwise_client.api.steps import describe_step, get_step_logs, list_steps
from stepwise_client.models import (
    CachePurge,
    CacheStatus,
    CallbackSuccessRequest,
    ChangedSteps,
    CreatePipelineRequest,
    Definition,
    ErrorCode,
    ErrorResponse,
    Execution,
    ExecutionList,
    ExecutionPlan,
    ExecutionStatus,
    ParameterValues,
    Pipeline,
    PlanVerdict,
    SelectiveExecutionRequest,
    StartExecutionRequest,
    StepDetail,
    StepList,
    StepStatus,
    UpdatePipelineRequest,
)

WAIT_SECONDS = 60
ENDED = {ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.STOPPED}
PIPELINES = json.loads((Path(__file__).resolve().parent.parent / "pipelines.json").read_text())


class FlowFailed(Exception):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise FlowFailed(what)
    print(f"ok: {what}")


def parsed(response, status: int, kind):
    """The typed body of a response that must have `status`."""
    if response.status_code != status or not isinstance(response.parsed, kind):
        raise FlowFailed(f"expected {status} {kind.__name__}, got {response.status_code}: {response.content[:500]!r}")
    return response.parsed


def error(response, status: int, code: ErrorCode) -> ErrorResponse:
    body = parsed(response, status, ErrorResponse)
    check(body.error.code == code, f"{status} is a typed ErrorResponse with code {code.value}: {body.error.message}")
    return body


def wait(client, execution_id) -> Execution:
    """Long polls until the execution ends (the client's timeout is longer than wait_seconds)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        execution = parsed(
            describe_execution.sync_detailed(str(execution_id), client=client, wait_seconds=WAIT_SECONDS), 200, Execution
        )
        if execution.status in ENDED:
            return execution
    raise FlowFailed(f"execution {execution_id} did not end in 300 s")


def steps_of(client, execution_id) -> dict:
    listed = parsed(list_steps.sync_detailed(str(execution_id), client=client), 200, StepList)
    return {s.step_name: s for s in listed.steps}


def waiting_token(client, execution_id, previous: uuid.UUID | None = None) -> uuid.UUID:
    """The callback token of the waiting Approve step, once it waits. After a
    retry, the step's metadata shows the cancelled token of the stopped
    attempt until the new attempt waits: `previous` is skipped."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        step = steps_of(client, execution_id)["Approve"]
        callback = step.metadata.callback
        token = callback.token if callback else None
        if step.status == StepStatus.EXECUTING and isinstance(token, uuid.UUID) and token != previous:
            return token
        time.sleep(0.2)
    raise FlowFailed("the Callback step never waited")


def start(client, name: str, body: StartExecutionRequest) -> Execution:
    return parsed(start_execution.sync_detailed(name, client=client, body=body), 201, Execution)


def pipelines_flow(client, train: str, gate: str) -> None:
    definition = PIPELINES["train"]
    created = parsed(
        create_pipeline.sync_detailed(
            client=client, body=CreatePipelineRequest(name=train, definition=Definition.from_dict(definition))
        ),
        201,
        Pipeline,
    )
    check(created.version == 1, f"created pipeline {train}, version 1")
    changed = copy.deepcopy(definition)
    changed["Steps"][2]["Arguments"]["epochs"] = {"Get": "Parameters.Epochs"}
    updated = parsed(
        update_pipeline.sync_detailed(
            train,
            client=client,
            body=UpdatePipelineRequest(definition=Definition.from_dict(changed), description="with epochs"),
        ),
        200,
        Pipeline,
    )
    check(updated.version == 2 and updated.description == "with epochs", "updated it: version 2")
    described = parsed(describe_pipeline.sync_detailed(train, client=client), 200, Pipeline)
    check(described.definition["Steps"][2]["Arguments"]["epochs"] is not None, "its definition is the new one")
    parsed(
        create_pipeline.sync_detailed(
            client=client, body=CreatePipelineRequest(name=gate, definition=Definition.from_dict(PIPELINES["gate"]))
        ),
        201,
        Pipeline,
    )
    check(True, f"created pipeline {gate}")


def run_flow(client, train: str) -> list:
    first = start(client, train, StartExecutionRequest(parameters=ParameterValues.from_dict({"Epochs": 12})))
    check(first.status == ExecutionStatus.EXECUTING, "started with parameters Epochs=12")
    first = wait(client, first.execution_id)
    check(first.status == ExecutionStatus.SUCCEEDED, f"long poll: {first.execution_arn} Succeeded")
    check(first.parameters["Epochs"] == 12, "its effective parameters have Epochs=12")
    steps = steps_of(client, first.execution_id)
    check(list(steps) == ["Prepare", "Train", "Report"], "listed its steps in pipeline order")
    train_step = steps["Train"]
    check(train_step.properties.outputs["accuracy"] == 0.93, "Train's properties: Outputs.accuracy = 0.93")
    check(train_step.properties.exit_code == 0, "Train's properties: ExitCode = 0")
    check(train_step.metadata.command.exit_code == 0, "Train's metadata: command.exit_code = 0")
    check(train_step.cache.status == CacheStatus.MISS and train_step.cache_hit is None, "Train's cache status: miss")
    log = parsed(get_step_logs.sync_detailed(str(first.execution_id), "Train", client=client), 200, str)
    check("training for 12 epochs" in log, "read Train's log")

    second = wait(client, start(client, train, StartExecutionRequest(parameters=ParameterValues.from_dict({"Epochs": 12}))).execution_id)
    detail = parsed(describe_step.sync_detailed(str(second.execution_id), "Train", client=client), 200, StepDetail)
    check(detail.cache.status == CacheStatus.HIT, "the same start again: Train's cache status is hit")
    check(detail.cache_hit.source_execution_arn == first.execution_arn, "its cache_hit names the first execution")
    check(detail.cache.components is not None, "its cache details carry the key components")

    selective = start(
        client,
        train,
        StartExecutionRequest(
            selective_execution=SelectiveExecutionRequest(selected_steps=["Report"], source_execution=first.execution_arn)
        ),
    )
    selective = wait(client, selective.execution_id)
    check(selective.status == ExecutionStatus.SUCCEEDED, "selective start of Report by source ARN Succeeded")
    check(selective.selective_execution.source_execution_arn == first.execution_arn, "it records its source")
    steps = steps_of(client, selective.execution_id)
    check(steps["Train"].reused_from.source_execution_arn == first.execution_arn, "Train was reused from the source")
    check(steps["Report"].reused_from is None and steps["Report"].attempt_count == 1, "Report ran")

    plan = parsed(
        plan_execution.sync_detailed(
            train,
            client=client,
            body=StartExecutionRequest(
                parameters=ParameterValues.from_dict({"Epochs": 14}),
                selective_execution=SelectiveExecutionRequest(
                    selected_steps=ChangedSteps.CHANGED, source_execution=str(first.execution_id)
                ),
            ),
        ),
        200,
        ExecutionPlan,
    )
    verdicts = {s.step_name: s.verdict for s in plan.steps}
    check(not plan.errors and verdicts["Prepare"] == PlanVerdict.REUSE, f"plan of \"changed\" with Epochs=14: {verdicts}")
    check(verdicts["Train"] in (PlanVerdict.RUN, PlanVerdict.RUNUNLESSUNCHANGED), "the plan runs Train")

    changed = start(
        client,
        train,
        StartExecutionRequest(
            parameters=ParameterValues.from_dict({"Epochs": 14}),
            selective_execution=SelectiveExecutionRequest(
                selected_steps=ChangedSteps.CHANGED, source_execution=first.execution_arn
            ),
        ),
    )
    changed = wait(client, changed.execution_id)
    steps = steps_of(client, changed.execution_id)
    check(changed.status == ExecutionStatus.SUCCEEDED, "selective start with \"changed\" and Epochs=14 Succeeded")
    check(steps["Prepare"].reused_from is not None and steps["Train"].reused_from is None, "Prepare reused, Train ran")
    return [first, second, selective, changed]


def callback_flow(client, gate: str) -> None:
    execution = start(client, gate, StartExecutionRequest())
    token = waiting_token(client, execution.execution_id)
    check(True, "the Callback step waits; its token is typed in metadata.callback.token")
    stopped = parsed(stop_execution.sync_detailed(execution.execution_arn, client=client), 200, Execution)
    check(stopped.status in (ExecutionStatus.STOPPING, ExecutionStatus.STOPPED), f"stopped it by ARN: {stopped.status.value}")
    stopped = wait(client, execution.execution_id)
    check(stopped.status == ExecutionStatus.STOPPED, "it is Stopped")
    error(stop_execution.sync_detailed(str(execution.execution_id), client=client), 409, ErrorCode.CONFLICT)
    retried = parsed(retry_execution.sync_detailed(str(execution.execution_id), client=client), 200, Execution)
    check(retried.status == ExecutionStatus.EXECUTING, "retried it: Executing again")
    new_token = waiting_token(client, execution.execution_id, previous=token)
    check(True, "the retried Callback waits with a new token")
    reported = report_callback_success.sync_detailed(
        new_token, client=client, body=CallbackSuccessRequest(output_parameters=ParameterValues.from_dict({"score": 0.5}))
    )
    check(reported.status_code == 200 and reported.parsed.status.value == "Succeeded", "completed the callback")
    done = wait(client, execution.execution_id)
    check(done.status == ExecutionStatus.SUCCEEDED, "the execution Succeeded")
    check(steps_of(client, execution.execution_id)["Use"].properties.outputs["score"] == 0.5, "Use read score 0.5")
    error(
        report_callback_success.sync_detailed(new_token, client=client, body=CallbackSuccessRequest()),
        409,
        ErrorCode.CONFLICT,
    )


def paging_and_errors(client, train: str, started: list) -> None:
    purged = parsed(purge_cache.sync_detailed(train, client=client), 200, CachePurge)
    check(purged.deleted >= 2, f"purged the cache: {purged.deleted} entries")
    seen, token, pages = [], None, 0
    while True:
        page = parsed(list_executions.sync_detailed(train, client=client, limit=3, next_token=token), 200, ExecutionList)
        seen += [e.execution_id for e in page.executions]
        pages += 1
        if not isinstance(page.next_token, str):
            break
        token = page.next_token
    expected = [e.execution_id for e in reversed(started)]
    check(seen == expected and pages == 2, f"paged through {len(seen)} executions, newest first, in {pages} pages")
    error(
        start_execution.sync_detailed(
            train, client=client, body=StartExecutionRequest(parameters=ParameterValues.from_dict({"Nope": 1}))
        ),
        400,
        ErrorCode.VALIDATIONERROR,
    )
    error(describe_pipeline.sync_detailed("no-such-pipeline", client=client), 404, ErrorCode.NOTFOUND)
    error(
        create_pipeline.sync_detailed(
            client=client, body=CreatePipelineRequest(name=train, definition=Definition.from_dict(PIPELINES["train"]))
        ),
        409,
        ErrorCode.CONFLICT,
    )


def main() -> int:
    client = AuthenticatedClient(
        base_url=os.environ["STEPWISE_URL"],
        token=os.environ["STEPWISE_TOKEN"],
        # Longer than wait_seconds, or the long poll times out in the client.
        timeout=httpx.Timeout(WAIT_SECONDS + 30),
        raise_on_unexpected_status=True,
    )
    suffix = uuid.uuid4().hex[:8]
    train, gate = f"py-train-{suffix}", f"py-gate-{suffix}"
    try:
        with client:
            pipelines_flow(client, train, gate)
            started = run_flow(client, train)
            callback_flow(client, gate)
            paging_and_errors(client, train, started)
    except FlowFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print("python flow: every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
