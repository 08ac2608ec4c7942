"""CPU time the experiment stage adds per request, in process (robust to a busy machine,
unlike end-to-end latency): a pipeline of the stage and a terminal stage, with no live
experiment and with one or four live experiments that enrol every request (tenant unit,
two arms, overrides of the token policy and the serving model), against the terminal
stage alone. ``time.process_time`` over ``--n`` requests, median of ``--rounds``.

    .venv/bin/python bench/experiment_stage_cost.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from services.experiments import LiveExperiment
from services.experiments.assignment import live_arms
from services.gateway.auth import Principal
from services.gateway.pipeline import Pipeline, Reply, RequestContext
from services.gateway.stages.experiments import ExperimentStage
from services.protocol import ChatCompletionRequest

REQUEST = ChatCompletionRequest.model_validate(
    {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
HEADERS = {"content-type": "application/json", "authorization": "Bearer k", "accept": "*/*"}


class Answer:
    name = "answer"

    async def __call__(self, ctx: RequestContext, call_next) -> Reply:
        return Reply(body=b"{}")


def experiment(name: str) -> LiveExperiment:
    return LiveExperiment(name, "tenant", None, live_arms([
        ("control", "a", {"token_optimization": "off"}, 0.5),
        ("canary", "b", {"token_optimization": "lossless", "model": "m2"}, 0.5)]))


async def per_request_us(pipeline: Pipeline, n: int) -> float:
    start = time.process_time()
    for i in range(n):
        await pipeline(RequestContext(request_id="r", endpoint="chat.completions",
                                      request=REQUEST, principal=Principal(f"tenant-{i % 97}"),
                                      model_requested="m", request_headers=HEADERS))
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cases: dict[str, Pipeline] = {"no stage": Pipeline([Answer()])}
    for live in (0, 1, 4):
        stage = ExperimentStage()
        stage.live = [experiment(f"e{i}") for i in range(live)]
        cases[f"stage, {live} live"] = Pipeline([stage, Answer()])
    results = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, pipeline in cases.items():
            results[name].append(asyncio.run(per_request_us(pipeline, args.n)))
    base = statistics.median(results["no stage"])
    print("| pipeline | CPU us per request | added by the stage, us |")
    print("| --- | ---: | ---: |")
    out = {}
    for name, runs in results.items():
        med = statistics.median(runs)
        out[name] = round(med - base, 2)
        print(f"| {name} | {med:.2f} | {med - base:.2f} |")
    print(json.dumps({"stage_added_cpu_us": out}))


if __name__ == "__main__":
    main()
