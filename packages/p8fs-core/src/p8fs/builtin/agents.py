"""Built-in agents plugin: DreamModel and MomentBuilder, registered like anyone else's agents.

Registration imports only the pydantic models; instructor and the SDKs load when an agent runs.
The registry also files each class under its ``agent_aliases`` (the original system's
``agentlets.moments.MomentBuilder`` and ``agentlets.dreaming.DreamModel``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from p8fs import hookimpl


@hookimpl
def p8fs_register_agents(register: Callable[[type[Any]], None]) -> None:
    from p8fs.agents.dream import DreamModel
    from p8fs.agents.moments import MomentBuilder

    register(MomentBuilder)
    register(DreamModel)
