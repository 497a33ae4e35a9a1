"""Scores samples with Ragas (0.4.3, `ragas.metrics.collections`) for tests/tests/eval_ragas.rs.

Reads a JSON list of samples from the file named by argv[1]:
  {"id", "predicted": [{"name", "args"}], "reference_calls": [...] | null,
   "response": str, "reference": str | null}
and prints one JSON object per sample with Ragas' scores, computed by Ragas' own metric classes:
tool_call_accuracy (strict order), tool_call_accuracy_any_order (strict_order=False),
tool_call_f1, exact_match, string_present.
"""

import asyncio
import json
import os
import sys
import warnings

os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
warnings.simplefilter("ignore")

from ragas.messages import AIMessage, HumanMessage, ToolCall  # noqa: E402
from ragas.metrics.collections import (  # noqa: E402
    ExactMatch,
    StringPresence,
    ToolCallAccuracy,
    ToolCallF1,
)


async def score(sample):
    calls = [ToolCall(name=c["name"], args=c["args"]) for c in sample["predicted"]]
    conversation = [HumanMessage(content="q")]
    if calls:
        conversation.append(AIMessage(content="", tool_calls=calls))
    conversation.append(AIMessage(content=sample["response"]))
    out = {"id": sample["id"]}
    reference_calls = sample.get("reference_calls")
    if reference_calls is not None:
        ref = [ToolCall(name=c["name"], args=c["args"]) for c in reference_calls]
        out["tool_call_accuracy"] = (
            await ToolCallAccuracy(strict_order=True).ascore(
                user_input=conversation, reference_tool_calls=ref
            )
        ).value
        out["tool_call_accuracy_any_order"] = (
            await ToolCallAccuracy(strict_order=False).ascore(
                user_input=conversation, reference_tool_calls=ref
            )
        ).value
        out["tool_call_f1"] = (
            await ToolCallF1().ascore(user_input=conversation, reference_tool_calls=ref)
        ).value
    reference = sample.get("reference")
    if reference is not None:
        out["exact_match"] = (
            await ExactMatch().ascore(reference=reference, response=sample["response"])
        ).value
        out["string_present"] = (
            await StringPresence().ascore(reference=reference, response=sample["response"])
        ).value
    return out


async def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        samples = json.load(f)
    results = [await score(s) for s in samples]
    # repr() of each float, so the comparison is of the exact value.
    print(json.dumps([{k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()} for r in results]))


asyncio.run(main())
