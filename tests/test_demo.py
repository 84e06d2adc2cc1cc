from __future__ import annotations

import json

from fewshot.demo import run_demo
from fewshot.training.checkpoint import load_model


def test_demo_writes_the_run_folder_and_reports_both_settings(tmp_path):
    rows = run_demo(tmp_path / "demo", minutes=0.05, episodes=100)
    assert [(r["ways"], r["shots"]) for r in rows] == [(5, 1), (5, 5)]
    assert all(0.2 < r["accuracy"] <= 1 and r["ci95"] > 0 and 0 <= r["ece"] < 0.5 for r in rows)
    for name in ("config.json", "metrics.csv", "best.pt", "last.pt", "curves.png", "calibration.json", "episode.png",
                 "results.json"):
        assert (tmp_path / "demo" / name).is_file(), name
    assert json.loads((tmp_path / "demo" / "results.json").read_text())[0]["episodes"] == 100
    # the demo's run has validation classes: best.pt's temperature was fitted on them and lowered their NLL
    calibration = json.loads((tmp_path / "demo" / "calibration.json").read_text())
    assert "failed" not in calibration and calibration["after"]["nll"] < calibration["before"]["nll"]
    assert load_model(tmp_path / "demo")[1].temperature == calibration["temperature"] != 1.0
