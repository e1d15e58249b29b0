"""The agent class: the contract (:mod:`p8fs.agents.contract`) plus running and display.

Subclass :class:`Agent`: its docstring is the system prompt, its fields the typed output, and
``MyAgent.run(data)`` / ``await MyAgent.arun(data)`` run it. Defining an agent imports nothing
heavy: instructor and the SDKs load inside the runtime when an agent runs.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Self

from p8fs.agents.contract import AgentContract, AgentInput, FollowUpCall, write_summary
from p8fs.agents.runtime import arun_agent, run_agent

__all__ = ["Agent", "AgentInput", "FollowUpCall", "write_summary"]


class Agent(AgentContract):
    """Base of p8fs agents (subclasses replace this docstring with their system prompt)."""

    #: Other names the registry resolves to this class (``p8fs eval --agent-model``).
    agent_aliases: ClassVar[tuple[str, ...]] = ()

    # -- running ------------------------------------------------------------------------
    @classmethod
    def run(cls, data: Any, **options: Any) -> Self:
        """Run the agent and wait for it; safe inside a running event loop (Jupyter).

        Options: ``model`` (e.g. ``claude-sonnet-5-5``, ``openai/gpt-4o``), ``max_retries``,
        ``context_tokens``, ``settings``, ``llm`` (see :func:`p8fs.agents.runtime.arun_agent`).
        """
        return run_agent(cls, data, **options)

    @classmethod
    async def arun(cls, data: Any, **options: Any) -> Self:
        """Run the agent in the current event loop."""
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
