"""Agents: pydantic models whose docstrings are system prompts, run through instructor.

``MomentBuilder`` turns a transcript into typed moments; ``DreamModel`` turns a user's sessions
and documents into goals, dreams, fears, tasks and relationships. Both run with
``await Agent.arun(data)`` or the blocking ``Agent.run(data)`` (safe in Jupyter). Importing this
package loads pydantic models only; instructor and the LLM SDKs load on the first run.
"""

from p8fs.agents.base import Agent, AgentInput
from p8fs.agents.dream import DreamModel, UserData
from p8fs.agents.errors import (
    AgentOutputError,
    AgentRequestError,
    AgentServiceError,
    InvalidAgentInput,
)
from p8fs.agents.moments import MOMENT_TYPES, ExtractedMoment, MomentBuilder
from p8fs.agents.transcripts import Transcript, read_transcript

__all__ = [
    "MOMENT_TYPES",
    "Agent",
    "AgentInput",
    "AgentOutputError",
    "AgentRequestError",
    "AgentServiceError",
    "DreamModel",
    "ExtractedMoment",
    "InvalidAgentInput",
    "MomentBuilder",
    "Transcript",
    "UserData",
    "read_transcript",
]
