"""A small AIR output tree, so that ``serve`` without a config works at once.

It holds one project in all three steps: render run ``rnd_7f3a9c`` (a mix,
stems, a preview and metadata), two MIDI runs for it (the newer one wins), a
param run and the link between them. The audio is real: short sine tones as
16-bit WAV and a few silent MPEG frames as MP3; the MIDI file plays a phrase.
All files carry one fixed mtime, so the sample ZIP is the same every time.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import wave
from pathlib import Path
from typing import Any

SAMPLE_RENDER_RUN_ID = "rnd_7f3a9c"
SAMPLE_PARAM_RUN_ID = "prm_51be02"
_SAMPLE_MTIME = 1793528100  # 2026-11-01 10:15:00 UTC


def _tone(frequency: float, seconds: float = 0.5, rate: int = 22050) -> bytes:
    frames = b"".join(
        struct.pack("<h", int(12000 * math.sin(2 * math.pi * frequency * n / rate)))
        for n in range(int(seconds * rate))
    )
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return buffer.getvalue()


def _silent_mp3(frames: int = 20) -> bytes:
    # MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, mono: 417-byte frames whose
    # all-zero side information decodes as silence.
    header = bytes([0xFF, 0xFB, 0x90, 0xC0])
    return (header + bytes(417 - len(header))) * frames


def _midi_phrase() -> bytes:
    events = bytearray(b"\x00\xff\x51\x03\x07\xa1\x20")  # tempo: 120 bpm
    for note in (60, 64, 67, 72):
        events += bytes([0x00, 0x90, note, 96, 0x60, 0x80, note, 0])
    events += b"\x00\xff\x2f\x00"  # end of track
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, 96)
    return header + b"MTrk" + struct.pack(">I", len(events)) + bytes(events)


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, indent=2).encode()


def create_sample_tree(base: Path) -> dict[str, Any]:
    """Write the sample under ``base``; returns the config mapping that serves it."""
    render = base / "render" / "output"
    midi = base / "midi_generation" / "output"
    param = base / "param_generation" / "output"
    links = base / "projects" / "output" / "step_links.json"
    run = SAMPLE_RENDER_RUN_ID
    files = {
        render / run / "mix.wav": _tone(220.0),
        render / run / "preview.mp3": _silent_mp3(),
        render / run / "stems" / "bass.wav": _tone(110.0),
        render / run / "stems" / "drums.wav": _tone(55.0),
        render / run / "stems" / "lead synth.wav": _tone(440.0),
        render / run / "render.json": _json({"run_id": run, "sample_rate": 22050}),
        midi / f"20261101_100900_{run}" / "track.mid": _midi_phrase(),
        midi / f"20261101_101300_{run}" / "track.mid": _midi_phrase(),
        midi / f"20261101_101300_{run}" / "midi.json": _json({"run_id": run, "bpm": 120}),
        param / f"20261101_101200_{SAMPLE_PARAM_RUN_ID}" / "params.json": _json(
            {"prompt": "warm lo-fi loop", "bpm": 120, "key": "C major"}
        ),
        links: _json(
            {run: {"param_run_id": SAMPLE_PARAM_RUN_ID, "updated_at": float(_SAMPLE_MTIME)}}
        ),
    }
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.utime(path, (_SAMPLE_MTIME, _SAMPLE_MTIME))
    return {
        "server": {"host": "127.0.0.1", "port": 8080},
        "roots": {
            "render": str(render),
            "midi_generation": str(midi),
            "param_generation": str(param),
        },
        "links": {"file": str(links)},
    }
