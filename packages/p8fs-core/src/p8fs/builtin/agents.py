"""Built-in agents plugin: DreamModel and MomentBuilder, registered like anyone else's agents.

The hook runs on the first agent lookup (not at plugin load) and imports the models inside it, so
a command or worker that runs no agent never builds them; instructor and the SDKs load only when
an agent runs. The registry also files each class under its ``agent_aliases``
(``agentlets.moments.MomentBuilder`` and ``agentlets.dreaming.DreamModel``, the names
``p8fs eval --agent-model`` accepts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from p8fs import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from p8fs.agents.base import Agent


@hookimpl
def p8fs_register_agents(register: Callable[[type[Agent]], None]) -> None:
    from p8fs.agents.dream import DreamModel
    from p8fs.agents.moments import MomentBuilder

    register(MomentBuilder)
    register(DreamModel)
