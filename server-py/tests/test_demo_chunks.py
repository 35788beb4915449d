"""`inferential demo --chunk`: a short chunked fleet against real servers writes its report,
and the paused run refuses the actions that came back past their valid_until_ns."""

from __future__ import annotations

import json

from inferential.cli import main


def test_a_short_chunk_demo_reports_each_variant_and_the_pause_is_refused(tmp_path):
    code = main(
        [
            "demo",
            "--chunk",
            "16",
            "--robots",
            "2",
            "--rates",
            "50",
            "--duration",
            "3",
            "--variants",
            "rtc,pause",
            "--model-ms",
            "8,1",
            "--pause-ms",
            "500",
            "--max-age-ms",
            "200",
            "--report",
            str(tmp_path),
        ]
    )
    assert code == 0
    folder = tmp_path / "chunks"
    data = json.loads((folder / "chunks.json").read_text())
    rtc, pause = data["variants"]
    assert (rtc["variant"], pause["variant"]) == ("rtc", "pause")
    for v in (rtc, pause):
        assert [r["name"] for r in v["robots"]] == ["arm-00", "arm-01"]
        assert all(r["executed"] > 0 and r["failure"] is None for r in v["robots"])
        assert v["delay_abs_error_median"] >= 0
    # The stall outlasts a robot's queue (8 actions, 160 ms) and the replies' 200 ms validity:
    # the robots run dry, and the chunks that then arrive are refused as stale.
    assert pause["held"] > 0
    assert pause["stale_chunks"] > 0  # replies past their valid_until_ns: none of their rows ran
    assert all(r["underruns_per_min"] > 0 for r in pause["robots"])
    assert (folder / "chunks.png").stat().st_size > 10_000
    assert (folder / "chunks_robots.png").stat().st_size > 10_000
    assert "pause" in (folder / "index.html").read_text()
