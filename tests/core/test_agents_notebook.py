"""``docs/agents-in-notebooks.ipynb`` runs top to bottom in a real Jupyter kernel.

nbclient starts an ipykernel (whose event loop is running, as in Jupyter), the kernel inherits
``ANTHROPIC_BASE_URL`` pointing at the local server, and every cell must execute: ``await
MomentBuilder.arun``, the blocking ``MomentBuilder.run`` inside the running loop, scoring and
DreamModel. The server answers from what each request contains.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.fixtures.llm import FakeLLMServer, RecordedRequest
from tests.fixtures.servers import REPO_ROOT

NOTEBOOK = REPO_ROOT / "docs" / "agents-in-notebooks.ipynb"


def reply(request: RecordedRequest) -> dict[str, Any]:
    text = request.user_text
    if request.forced_tool == "MomentBuilder":
        start = re.search(r"^start_timestamp: (\S+)$", text, re.MULTILINE)
        end = re.search(r"^end_timestamp: (\S+)$", text, re.MULTILINE)
        assert start and end
        people = re.findall(r"fingerprint_id: (\S+), user_id: (\S+), user_label: (\w+)", text)
        return {
            "moments": [
                {
                    "name": "Notebook standup",
                    "content": "Standup: auth done, dashboard blocked on charts.",
                    "resource_timestamp": start.group(1),
                    "resource_ends_timestamp": end.group(1),
                    "moment_type": "meeting",
                    "emotion_tags": ["focused"],
                    "topic_tags": ["standup", "dashboard"],
                    "present_persons": [
                        {"fingerprint_id": f, "user_id": u, "user_label": label}
                        for f, u, label in people
                    ],
                }
            ],
            "analysis_summary": "One standup.",
            "total_moments": 1,
        }
    assert request.forced_tool == "DreamModel"
    goals = []
    if "Project Alpha" in text:
        goals.append(
            {"goal": "Ship Project Alpha by March", "category": "career", "priority": "high"}
        )
    if "Rust" in text:
        goals.append({"goal": "Learn Rust", "category": "learning", "priority": "medium"})
    return {"executive_summary": "Ambitious about Alpha, worried about the SLA.", "goals": goals}


def test_notebook_runs_against_the_local_server(llm_server: FakeLLMServer) -> None:
    nbformat = pytest.importorskip("nbformat", reason="dev dependency nbformat is not installed")
    nbclient = pytest.importorskip("nbclient", reason="dev dependency nbclient is not installed")
    llm_server.responder = reply
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(REPO_ROOT)}},
    )
    client.execute()

    outputs = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", output
            outputs.append(output.get("text", "") + str(output.get("data", {})))
    everything = "\n".join(outputs)
    assert "API key set: True" in everything
    assert "moment_type: meeting" in everything  # the YAML display and print(...)
    assert "meeting      Notebook standup (Alex, Jordan)" in everything
    assert "type_agreement=1.0" in everything
    assert "Ship Project Alpha by March" in everything and "Learn Rust" in everything
    tools = [r.forced_tool for r in llm_server.message_requests()]
    assert tools == ["MomentBuilder", "MomentBuilder", "DreamModel"]
