"""The agent contract: what the runtime calls on an agent class, and the input it is handed.

An agent class is its own output schema (instructor sends ``model_json_schema()`` as the tool's
``input_schema``) and knows three things the generic runtime does not:

* how to turn its input into a header every call repeats plus *records* the chunker may split
  between calls but never cut (:meth:`AgentContract.prepare_input`);
* how to merge the partial results of several calls (:meth:`AgentContract.merge`) — never by
  keeping the last one;
* what, if anything, one last call must write over the merged result
  (:meth:`AgentContract.finalize`).

This module sits below :mod:`p8fs.agents.runtime`, which is typed against
:class:`AgentContract`; :class:`p8fs.agents.base.Agent` adds running (through the runtime) and
display on top. So the imports go one way: contract <- runtime <- base.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from pydantic import BaseModel

from p8fs.agents.errors import InvalidAgentInput
from p8fs.providers import Section

M = TypeVar("M", bound=BaseModel)

#: ``await call(ResponseModel, user_text)``: one more structured call, for
#: :meth:`AgentContract.finalize`.
FollowUpCall = Callable[[type[M], str], Awaitable[M]]


async def write_summary(
    call: FollowUpCall[Any],
    response_model: type[M],
    agent_input: AgentInput,
    findings: dict[str, Any],
    partial_summaries: list[str],
) -> M:
    """The one final call both agents make after merging parts: the merged findings and the
    parts' own summaries in, a summary of the whole out.

    Joining the partial summaries would read as N disconnected paragraphs, and keeping one
    would drop the others; so every agent that merges writes its summary this same way, in
    direct and batch runs alike.
    """
    import yaml

    items = agent_input.context.get("documents") or len(agent_input.records)
    text = (
        f"{agent_input.header}\n\nMerged findings of {items} items, analysed in parts:\n\n"
        + yaml.safe_dump(findings, sort_keys=False, allow_unicode=True)
        + "\nPartial summaries:\n\n"
        + "\n\n".join(f"- {s}" for s in partial_summaries if s)
    )
    return await call(response_model, text)


@dataclass
class AgentInput:
    """An agent's input, ready for the runtime to chunk and send.

    ``header`` goes into every call; ``records`` are packed into as few calls as the context
    allows, each kept whole; ``context`` is instructor's validation context (e.g. the transcript's
    bounds that every moment must fall inside).
    """

    header: str
    records: list[Section]
    context: dict[str, Any] = field(default_factory=dict)
    source: str | None = None


class AgentContract(BaseModel):
    """What the runtime calls on an agent (subclass :class:`p8fs.agents.base.Agent`, which
    replaces this docstring with its system prompt)."""

    # -- what subclasses customise ------------------------------------------------------
    @classmethod
    def system_prompt(cls) -> str:
        """The class docstring, dedented: exactly what the model reads as ``system``."""
        return inspect.cleandoc(cls.__doc__ or "")

    @classmethod
    def prepare_input(cls, data: Any) -> AgentInput:
        """Default: text (or a list of texts) becomes paragraph records."""
        if isinstance(data, AgentInput):
            return data
        if isinstance(data, str):
            parts = [p.strip() for p in data.split("\n\n") if p.strip()]
        elif isinstance(data, list | tuple) and all(isinstance(x, str) for x in data):
            parts = [str(x) for x in data if str(x).strip()]
        else:
            raise InvalidAgentInput(f"{cls.__name__} cannot read {type(data).__name__} input")
        if not parts:
            raise InvalidAgentInput(f"{cls.__name__}: the input is empty")
        return AgentInput(header="", records=[Section(text=p) for p in parts])

    @classmethod
    def merge(cls, parts: list[Self], agent_input: AgentInput) -> Self:
        """Combine the results of several calls over one input (chunked input)."""
        raise NotImplementedError(
            f"{cls.__name__} does not define how to merge partial results; its input must fit "
            "one call (raise P8FS_LLM_CONTEXT_TOKENS)"
        )

    @classmethod
    def postprocess(cls, result: Self, agent_input: AgentInput) -> Self:
        """Fill what the input states outright (e.g. the source URI) if the model left it out."""
        return result

    @classmethod
    async def finalize(cls, merged: Self, call: FollowUpCall[Any], agent_input: AgentInput) -> Self:
        """After a merge: one more call if the merged result needs it (default: none)."""
        return merged

    @classmethod
    def repair(cls, output: dict[str, Any] | None, agent_input: AgentInput) -> Self | None:
        """The last attempt's output made valid by a documented, deterministic repair of this
        agent's own, or ``None`` (the default: the run fails with the validation error).

        ``output`` is the last answer's JSON as the service returned it. The runtime has
        already tried it as it is, leniently parsed (see
        :func:`p8fs.agents.runtime.structured_call`); content is never invented here.
        """
        return None
