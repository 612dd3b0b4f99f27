"""Words that match the numbers: what a user reads says what was done."""

from __future__ import annotations

import torch

from edgeprune.models import create_model
from edgeprune.training import TrainConfig, train


def test_a_fractional_epoch_is_shown_as_the_share_of_batches_it_trains(synthetic, capsys):
    torch.manual_seed(0)
    model = create_model("democnn", in_channels=1, num_classes=4)
    train(model, synthetic, TrainConfig(epochs=0.25, batch_size=64, monitor=False),
          description="fine-tuning")
    err = capsys.readouterr().err
    assert "fine-tuning epoch 1/1 (0.25 epochs: 2 of its 8 batches): loss" in err
