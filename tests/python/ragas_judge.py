"""Judged metrics by Ragas (0.4.3, `ragas.metrics.collections`) with the given OpenAI-compatible
model as judge, for tests/src/bin/judge_agreement.rs.

    ragas_judge.py SAMPLES.json MODEL_BASE_URL MODEL_NAME EMBED_BASE_URL EMBED_MODEL

SAMPLES.json is a list of {"id", "prompt", "messages": [{"type": "human"|"ai"|"tool",
"content", "tool_calls"?}], "response", "contexts": [str], "goal": str}. Prints a JSON list of
{"id", metric: score | null (Ragas failed or gave NaN), metric + "_error": message}.
"""

import asyncio
import json
import math
import os
import sys
import warnings

os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
warnings.simplefilter("ignore")

from openai import AsyncOpenAI  # noqa: E402
from ragas.embeddings import embedding_factory  # noqa: E402
from ragas.llms import llm_factory  # noqa: E402
from ragas.messages import AIMessage, HumanMessage, ToolCall, ToolMessage  # noqa: E402
from ragas.metrics.collections import (  # noqa: E402
    AgentGoalAccuracyWithoutReference,
    AgentGoalAccuracyWithReference,
    AnswerRelevancy,
    Faithfulness,
)


def conversation(sample):
    out = []
    for m in sample["messages"]:
        if m["type"] == "human":
            out.append(HumanMessage(content=m["content"]))
        elif m["type"] == "tool":
            out.append(ToolMessage(content=m["content"]))
        else:
            calls = [ToolCall(name=c["name"], args=c["args"]) for c in m.get("tool_calls", [])]
            out.append(AIMessage(content=m["content"], tool_calls=calls or None))
    return out


async def run(metric, name, out, **kwargs):
    try:
        value = (await metric.ascore(**kwargs)).value
        out[name] = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
    except Exception as e:  # noqa: BLE001 - a failed judgement is a measurement too
        out[name] = None
        out[name + "_error"] = f"{type(e).__name__}: {str(e)[:200]}"


async def main():
    path, model_url, model_name, embed_url, embed_model = sys.argv[1:6]
    with open(path, encoding="utf-8") as f:
        samples = json.load(f)
    client = AsyncOpenAI(base_url=model_url, api_key="unused", timeout=120)
    llm = llm_factory(model_name, client=client, temperature=0.0, max_tokens=1024)
    embeddings = embedding_factory(
        "openai", model=embed_model, client=AsyncOpenAI(base_url=embed_url, api_key="unused")
    )
    with_ref = AgentGoalAccuracyWithReference(llm=llm)
    without_ref = AgentGoalAccuracyWithoutReference(llm=llm)
    faithfulness = Faithfulness(llm=llm)
    relevancy = AnswerRelevancy(llm=llm, embeddings=embeddings)
    results = []
    for s in samples:
        out = {"id": s["id"]}
        conv = conversation(s)
        await run(with_ref, "agent_goal_accuracy_with_reference", out, user_input=conv, reference=s["goal"])
        await run(without_ref, "agent_goal_accuracy_without_reference", out, user_input=conv)
        await run(
            faithfulness, "faithfulness", out,
            user_input=s["prompt"], response=s["response"], retrieved_contexts=s["contexts"],
        )
        await run(relevancy, "answer_relevancy", out, user_input=s["prompt"], response=s["response"])
        print(json.dumps(out), file=sys.stderr)
        results.append(out)
    print(json.dumps(results))


asyncio.run(main())
