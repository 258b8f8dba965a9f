"""Where a sync's time goes: the report says how long the encoder encoded and how long it waited for
the decoders (starved), so a slow run shows which side to feed (issue #20's pipeline profile)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from clipsearch.api import Index
from clipsearch.ingest.decode import OrderedStream
from clipsearch.ingest.sync import SyncOptions


def slow_decode(item: int) -> int:
    time.sleep(0.05)
    return item


def test_ordered_stream_counts_the_time_the_consumer_waits_for_workers() -> None:
    with ThreadPoolExecutor(1) as pool:
        starved = OrderedStream(pool, slow_decode, range(6), budget=4)
        assert list(starved) == list(range(6))
        assert starved.waited >= 0.2  # six 50-ms decodes on one worker: the consumer mostly waits
    with ThreadPoolExecutor(2) as pool:
        fed = OrderedStream(pool, lambda i: i, range(6), budget=4)
        time.sleep(0.05)  # the workers finish first: nothing to wait for
        results = []
        for item in fed:
            results.append(item)
            time.sleep(0.02)  # a slow consumer (the encoder)
        assert results == list(range(6)) and fed.waited < 0.02


def test_sync_report_splits_encoding_from_waiting_for_decoders(tmp_path: Path, tiny_encoder) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(5):
        Image.new("RGB", (80, 60), (40 * i, 100, 200)).save(folder / f"{i}.jpg")
    with Index.open_for_write(tmp_path / "idx", tiny_encoder) as idx:
        report = idx.sync([str(folder)], options=SyncOptions(export_text=False, batch_size=2))
    assert report.added == 5
    assert 0 < report.encode_seconds <= report.seconds
    assert 0 <= report.decode_wait_seconds <= report.seconds
    assert {"encode_seconds", "decode_wait_seconds"} <= set(report.to_dict())
