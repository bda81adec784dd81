"""ssl_train.training.fit: a failure of a resumed fit becomes one line naming the checkpoint and what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ssl_train.errors import UserError
from ssl_train.training import fit


class ResumesWithOtherGroups:
    """A stand-in Trainer whose fit restores an optimizer state saved with fewer parameter groups, as torch raises it."""

    def fit(self, *args: Any, **kwargs: Any) -> None:
        saved = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1).state_dict()
        now = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))]}, {"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=0.1)
        now.load_state_dict(saved)


def test_resuming_with_other_parameter_groups_is_one_line_naming_the_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UserError) as error:
        fit(ResumesWithOtherGroups(), None, None, "runs/a/checkpoints/last.ckpt", tmp_path)  # type: ignore[arg-type]
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("ckpt_path runs/a/checkpoints/last.ckpt: its optimizer state has other parameter groups")
    assert "optim.layer_decay" in message and "resume with the config the checkpoint was trained with" in message
