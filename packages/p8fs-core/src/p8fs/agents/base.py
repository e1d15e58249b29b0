"""The agent contract: a pydantic model whose docstring is its system prompt.

An agent class is its own output schema (instructor sends ``model_json_schema()`` as the tool's
``input_schema``) and knows three things the generic runtime does not:

* how to turn its input into a header every call repeats plus *records* the chunker may split
  between calls but never cut (:meth:`Agent.prepare_input`);
* how to merge the partial results of several calls (:meth:`Agent.merge`) — never by keeping
  the last one;
* what, if anything, one last call must write over the merged result (:meth:`Agent.finalize`).

Defining an agent imports nothing heavy: instructor and the SDKs load inside the runtime.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeVar

from pydantic import BaseModel

from p8fs.agents.errors import InvalidAgentInput
from p8fs.providers import Section

A = TypeVar("A", bound="Agent")
M = TypeVar("M", bound=BaseModel)

#: ``await call(ResponseModel, user_text)``: one more structured call, for :meth:`Agent.finalize`.
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


class Agent(BaseModel):
    """Base of p8fs agents (subclasses replace this docstring with their system prompt)."""

    #: Other names the registry resolves to this class (``p8fs eval --agent-model``).
    agent_aliases: ClassVar[tuple[str, ...]] = ()

    # -- what subclasses customise ------------------------------------------------------
    @classmethod
    def system_prompt(cls) -> str:
        """The class docstring, dedented: exactly what the model reads as ``system``."""
        import inspect

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

    # -- running ------------------------------------------------------------------------
    @classmethod
    def run(cls, data: Any, **options: Any) -> Self:
        """Run the agent and wait for it; safe inside a running event loop (Jupyter).

        Options: ``model`` (e.g. ``claude-sonnet-5-5``, ``openai/gpt-4o``), ``max_retries``,
        ``context_tokens``, ``settings``, ``llm`` (see :func:`p8fs.agents.runtime.arun_agent`).
        """
        from p8fs.agents.runtime import run_agent

        return run_agent(cls, data, **options)

    @classmethod
    async def arun(cls, data: Any, **options: Any) -> Self:
        """Run the agent in the current event loop."""
        from p8fs.agents.runtime import arun_agent

        return await arun_agent(cls, data, **options)

    # -- display ------------------------------------------------------------------------
    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(
            self.model_dump(mode="json", exclude_none=True),
            sort_keys=False,
            allow_unicode=True,
            width=100,
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=indent, ensure_ascii=False)

    def __str__(self) -> str:
        return self.to_yaml()

    def _repr_markdown_(self) -> str:
        """Jupyter shows results as readable YAML rather than one long ``repr`` line."""
        return f"**{type(self).__name__}**\n\n```yaml\n{self.to_yaml()}```"
