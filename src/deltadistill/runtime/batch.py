"""Many videos, one job: read a list, shard it across torchrun's processes, skip what is done.

Each process (rank r of w, from the same set-up `distill` uses) runs videos ``r, r + w, ...``. A
video's JSON lines appear only once complete, so a finished video is one whose JSONL exists, and a
rerun after a kill picks up where the job stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..train.ddp import barrier, init_from_env, shutdown
from ..video import frame_size, is_live


def video_list(videos: list[str], listing: Path | None = None) -> list[str]:
    """The videos given, then those listed in ``listing`` (one path per line; blank lines and ``#`` skipped)."""
    out = list(videos)
    if listing is not None:
        if not listing.is_file():
            raise FileNotFoundError(f"video list not found: {listing}")
        out += [line.strip() for line in listing.read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    if not out:
        raise ValueError("no videos: give --video (repeatable) or --videos-from FILE")
    if len(out) > 1 and any(is_live(v) for v in out):
        raise ValueError("a pipe, URL or device runs alone: give it as the only --video")
    for v in out:  # every entry before any work: a bad third video must not leave the first one's output
        if not is_live(v):
            frame_size(v)  # its header only: a missing or unreadable file is one line naming it
    return out


def outputs_for(video: str, out_dir: Path | None, render: bool) -> tuple[Path | None, Path]:
    """(mp4 or None, jsonl) for ``video``: in ``out_dir`` as ``<stem>.mp4``/``<stem>.jsonl``, else next to
    the video as ``<stem>.deltadistill.*`` (never over the video itself)."""
    src = Path(video)
    base = out_dir / src.stem if out_dir is not None else src.with_name(src.stem + ".deltadistill")
    return (base.with_suffix(".mp4") if render else None), base.with_suffix(".jsonl")


def run_many(videos: list[str], run_one: Callable[[str, Path | None, Path], str], out_dir: Path | None,
             render: bool, say: Callable[[str], None] = print) -> dict[str, int]:
    """Run ``run_one(video, mp4, jsonl)`` on this process's share of ``videos``; returns counts."""
    d = init_from_env()
    mine = videos[d.rank::d.world]
    counts = {"ran": 0, "skipped": 0}
    try:
        for video in mine:
            mp4, jsonl = outputs_for(video, out_dir, render)
            if jsonl.is_file() and (mp4 is None or mp4.is_file()):
                say(f"[rank {d.rank}] {video}: done before, skipped")
                counts["skipped"] += 1
                continue
            say(f"[rank {d.rank}] {video}: {run_one(video, mp4, jsonl)}")
            counts["ran"] += 1
        barrier(d)
    finally:
        shutdown(d)
    return counts
