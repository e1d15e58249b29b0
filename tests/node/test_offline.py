"""Nothing in p8fs-node reaches the internet: the guard that proves it, and the proofs.

Every test in tests/node runs under the loopback-only guard of ``conftest.py``, which fails a
test that even *tries* to get out. These tests show the guard really catches unstructured's
own telemetry when it is not switched off, that loopback still works for tests that need real
local servers, that spaCy never downloads, and (in a subprocess inside a network namespace with
no route out, which also covers pandoc and anything below Python) that every office format is
extracted with no connection attempt at all.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.fixtures.servers import REPO_ROOT, corpus_path
from tests.node.conftest import (
    NetworkGuard,
    OutboundConnectionBlocked,
    OutboundLookupBlocked,
    is_loopback_host,
)


def require_unstructured() -> None:
    """Skip when the office extra is missing, *without* importing unstructured (its import
    sends a telemetry ping unless opted out, which is what some of these tests check)."""
    if importlib.util.find_spec("unstructured") is None:
        pytest.skip("p8fs-node[office] (unstructured) is not installed")


@pytest.mark.allow_outbound_attempts
def test_guard_blocks_and_records_outbound_attempts(network_guard: NetworkGuard) -> None:
    with pytest.raises(OutboundLookupBlocked):
        socket.getaddrinfo("example.com", 443)
    with socket.socket() as sock, pytest.raises(OutboundConnectionBlocked):
        sock.connect(("192.0.2.1", 9))  # TEST-NET-1: never routable, never really tried
    with socket.socket() as sock, pytest.raises(OutboundConnectionBlocked):
        sock.connect_ex(("198.51.100.7", 9))  # TEST-NET-2
    assert len(network_guard.attempts) == 3
    assert "example.com" in network_guard.attempts[0]
    assert "192.0.2.1" in network_guard.attempts[1]


def test_guard_keeps_loopback_working() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        def echo() -> None:
            conn, _ = server.accept()
            with conn:
                conn.sendall(conn.recv(16).upper())

        thread = threading.Thread(target=echo)
        thread.start()
        with socket.create_connection(("localhost", port), timeout=5) as client:
            client.sendall(b"ping")
            assert client.recv(16) == b"PING"
        thread.join(5)


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("db.localhost", True),
        (None, True),
        ("0.0.0.0", True),
        ("10.0.0.1", False),
        ("8.8.8.8", False),
        ("packages.unstructured.io", False),
        ("localhost.evil.example", False),
    ],
)
def test_loopback_classification(host: str | None, local: bool) -> None:
    assert is_loopback_host(host) is local


@pytest.mark.allow_outbound_attempts
def test_guard_catches_unstructured_telemetry_unless_disabled(
    network_guard: NetworkGuard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """unstructured's real telemetry ping is caught by the guard; after disable_telemetry() the
    very same call makes no attempt. (The ping swallows its own errors, so only the guard's
    record shows it happened.)"""
    require_unstructured()
    from unstructured.utils import scarf_analytics

    from p8fs_node.offline import TELEMETRY_OPT_OUTS, disable_telemetry

    for name in TELEMETRY_OPT_OUTS:
        monkeypatch.delenv(name, raising=False)
    scarf_analytics()
    assert any("packages.unstructured.io" in a for a in network_guard.attempts), (
        network_guard.attempts
    )

    before = len(network_guard.attempts)
    disable_telemetry()
    assert os.environ["DO_NOT_TRACK"] == "1"
    scarf_analytics()
    assert len(network_guard.attempts) == before


def test_disable_telemetry_keeps_an_explicit_user_value(monkeypatch: pytest.MonkeyPatch) -> None:
    from p8fs_node.offline import disable_telemetry

    monkeypatch.setenv("DO_NOT_TRACK", "yes-please")
    monkeypatch.delenv("SCARF_NO_ANALYTICS", raising=False)
    disable_telemetry()
    assert os.environ["DO_NOT_TRACK"] == "yes-please"
    assert os.environ["SCARF_NO_ANALYTICS"] == "true"


def test_spacy_model_is_never_downloaded() -> None:
    require_unstructured()
    from p8fs.errors import ConfigurationError
    from p8fs_node.offline import SPACY_MODEL, prepare_unstructured

    prepare_unstructured()  # before the first import of unstructured, which pings on import
    from unstructured.nlp import tokenize

    nlp = tokenize._get_nlp()
    try:
        __import__(SPACY_MODEL)
        model_installed = True
    except ImportError:
        model_installed = False
    if not model_installed:
        assert nlp.pipe_names == ["sentencizer"]
    assert tokenize.sent_tokenize("The cat sat. The dog ran away quickly.") == [
        "The cat sat.",
        "The dog ran away quickly.",
    ]
    with pytest.raises(ConfigurationError, match="never downloads"):
        tokenize._install_spacy_model()


# Runs in a child process: extracts each file named on the command line with OfficeProvider,
# recording every socket event CPython raises, and prints a JSON report.
_CHILD = r"""
import json, os, sys
attempts = []
def audit(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto"):
        attempts.append(f"{event} {args[1] if event in ('socket.connect', 'socket.sendto') else args[0]!r}")
sys.addaudithook(audit)
from p8fs.providers import ExtractContext
from p8fs_node.office import OfficeProvider
provider = OfficeProvider()
texts = {}
for path in sys.argv[1:]:
    context = ExtractContext(filename=os.path.basename(path))
    texts[os.path.basename(path)] = "\n".join(s.text for s in provider.extract(path, context))
print(json.dumps({"attempts": attempts, "texts": texts,
                  "do_not_track": os.environ.get("DO_NOT_TRACK")}))
"""


def _network_namespace_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False)
    return probe.returncode == 0


def test_every_office_format_extracts_with_no_network_at_all(tmp_path: Path) -> None:
    """A fresh interpreter without DO_NOT_TRACK, in a network namespace with no interfaces up
    (so pandoc and C code cannot get out either), extracts docx, pptx, html, epub and rtf; it
    must produce their text and make zero socket connections or lookups."""
    require_unstructured()
    if not _network_namespace_available():
        pytest.skip(
            "unprivileged network namespaces (unshare -rn) are not permitted on this machine; "
            "the in-process guard of conftest.py still covers every other test"
        )
    rtf = tmp_path / "note.rtf"
    rtf.write_bytes(rb"{\rtf1\ansi{\fonttbl\f0\fswiss Helvetica;}\f0\pard Offline RTF works.\par}")
    files = [
        corpus_path("docs/unst_handbook-1p.docx"),
        corpus_path("docs/unst_fake-power-point-table.pptx"),
        corpus_path("docs/unst_fake-html-cp1252.html"),
        corpus_path("docs/unst_winter-sports.epub"),
        rtf,
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("DO_NOT_TRACK", "SCARF_NO_ANALYTICS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        ["unshare", "-rn", sys.executable, "-c", _CHILD, *map(str, files)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["attempts"] == []
    assert report["do_not_track"] == "1"
    texts = report["texts"]
    assert "CHAPTER 1 – INTRODUCTION" in texts["unst_handbook-1p.docx"]
    assert "Aqua" in texts["unst_fake-power-point-table.pptx"]
    assert "El niño comió paella con ñoquis." in texts["unst_fake-html-cp1252.html"]
    assert "Winter Sports in Switzerland" in texts["unst_winter-sports.epub"]
    assert "Offline RTF works." in texts["note.rtf"]
