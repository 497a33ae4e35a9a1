"""Python Strands reads sessions the Rust runtime wrote (tests/tests/strands_python.rs):

- an interrupted run: Strands sees the question and the pending tool execution, and resumes it
  with an interruptResponse (its own tool gets the answer; the recorded result of the other
  call is reused, not run again);
- a summarised conversation: Strands' summarising manager puts the summary first.

Usage: strands_reads_our_sessions.py <storage dir>. Prints one line per fact; exit 0.
"""
import os
import sys

os.environ.setdefault("AWS_REGION", "us-east-1")

from strands import Agent, tool  # noqa: E402
from strands.agent.conversation_manager import SummarizingConversationManager  # noqa: E402
from strands.models.model import Model  # noqa: E402
from strands.session.file_session_manager import FileSessionManager  # noqa: E402

STORE = sys.argv[1]


class Fixed(Model):
    """A model that answers with one text and records what it was sent."""

    def __init__(self, text):
        self.text, self.seen = text, []

    def update_config(self, **kwargs):
        pass

    def get_config(self):
        return {}

    async def structured_output(self, *args, **kwargs):
        raise NotImplementedError
        yield  # pragma: no cover

    async def stream(self, messages, tool_specs=None, system_prompt=None, **kwargs):
        self.seen.append(messages)
        yield {"messageStart": {"role": "assistant"}}
        yield {"contentBlockDelta": {"delta": {"text": self.text}}}
        yield {"contentBlockStop": {}}
        yield {"messageStop": {"stopReason": "end_turn"}}


answers = []


@tool(context=True)
def confirm_book(arg: str, tool_context) -> str:
    """Books after the user confirms."""
    answer = tool_context.interrupt("confirm_booking", reason={"arg": arg})
    answers.append(answer)
    return f"booked {arg}" if answer is True else "declined"


@tool
def lookup(arg: str) -> str:
    """Looks up."""
    raise RuntimeError("lookup ran again: its recorded result was not reused")


model = Fixed("Booked, as you confirmed.")
agent = Agent(
    agent_id="default",
    model=model,
    tools=[confirm_book, lookup],
    callback_handler=None,
    session_manager=FileSessionManager(session_id="interrupted", storage_dir=STORE),
)
state = agent._interrupt_state
print(f"interrupted: activated={state.activated} questions={[i.name for i in state.interrupts.values()]} "
      f"pending={state.pending_tool_execution is not None} messages={len(agent.messages)}")
ids = list(state.interrupts)
result = agent([{"interruptResponse": {"interruptId": ids[0], "response": True}}])
print(f"resumed: stop={result.stop_reason} tool_got={answers}")
results = [b["toolResult"]["content"][0]["text"] for m in model.seen[-1] for b in m["content"] if "toolResult" in b]
print(f"results_to_model={results}")

summarized = Agent(
    agent_id="default",
    model=Fixed("unused"),
    callback_handler=None,
    conversation_manager=SummarizingConversationManager(),
    session_manager=FileSessionManager(session_id="summarized", storage_dir=STORE),
)
first = summarized.messages[0]
print(f"summarized: role={first['role']} first={first['content'][0]['text']!r}")
print(f"summarized: next={summarized.messages[1]['content'][0]['text']!r}")
