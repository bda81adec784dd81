"""Selection of runs by the probe and by label-free proxies (ssl_train.eval.selection), on synthetic sweep rows."""

from __future__ import annotations

import math

import pytest

from ssl_train.eval.selection import CHECKPOINT_MODES, ONLINE_EVAL_MONITORS, select

ROWS = [
    {"job": "0", "linear_top1": 0.70, "repr_rankme": 10.0, "online_rankme": 30.0, "online_lidar": 5.0, "online_uniformity": -1.0, "online_alignment": 0.3},
    {"job": "1", "linear_top1": 0.80, "repr_rankme": 20.0, "online_rankme": 1.0, "online_lidar": 4.0, "online_uniformity": -2.0, "online_alignment": 0.5},
    {"job": "2", "linear_top1": 0.75, "repr_rankme": 15.0, "online_rankme": 2.0, "online_lidar": 6.0, "online_uniformity": -1.5, "online_alignment": 0.4},
]


def test_best_job_by_each_criterion_and_its_agreement_with_the_probe() -> None:
    chosen = {s.criterion.name: s for s in select(ROWS)}
    assert list(chosen) == ["linear probe top-1", "RankMe", "LiDAR", "uniformity", "alignment"]
    assert {name: (s.key, s.job) for name, s in chosen.items()} == {
        "linear probe top-1": ("linear_top1", "1"),
        "RankMe": ("repr_rankme", "1"),  # the final encoder's evaluation before the last online one (which says job 0)
        "LiDAR": ("online_lidar", "2"),
        "uniformity": ("online_uniformity", "1"),  # lower is better
        "alignment": ("online_alignment", "0"),
    }
    assert (chosen["RankMe"].spearman, chosen["RankMe"].kendall) == (pytest.approx(1.0), pytest.approx(1.0))
    assert (chosen["uniformity"].spearman, chosen["uniformity"].kendall) == (pytest.approx(1.0), pytest.approx(1.0))
    # LiDAR 5, 4, 6 against probe .70, .80, .75: ranks [2, 1, 3] vs [1, 3, 2] -> rho -0.5; 1 concordant, 2 discordant pairs
    assert (chosen["LiDAR"].spearman, chosen["LiDAR"].kendall) == (pytest.approx(-0.5), pytest.approx(-1 / 3))
    assert chosen["alignment"].spearman == pytest.approx(-1.0) and chosen["alignment"].n == 3


def test_without_labels_the_proxies_still_select() -> None:
    unlabelled = [{k: v for k, v in row.items() if k != "linear_top1"} for row in ROWS]
    unlabelled[1]["repr_rankme"] = math.nan  # a NaN is no score
    chosen = {s.criterion.name: s for s in select(unlabelled)}
    assert "linear probe top-1" not in chosen
    assert (chosen["RankMe"].job, chosen["RankMe"].n) == ("2", 2) and math.isnan(chosen["RankMe"].spearman)
    assert select([{"job": "0", "method": "simclr"}]) == []


def test_checkpoint_modes() -> None:
    assert CHECKPOINT_MODES == {
        "val/online_top1": "max",
        "val/knn_top1": "max",
        "val/rankme": "max",
        "val/lidar": "max",
        "val/uniformity": "min",
        "val/alignment": "min",
    }
    assert "val/online_top1" not in ONLINE_EVAL_MONITORS and "val/rankme" in ONLINE_EVAL_MONITORS
