"""After which epochs a run validates: validation_schedule (every_n, published), the last
epoch always included (the configs: test_paper_configs.py)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from crackseg.runs.training_control import ValidationSchedule


class _Tiny(pl.LightningModule):
    """One weight, two batches an epoch; remembers after which epochs (from 1) it validated."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.validated: list[int] = []

    def training_step(self, batch, batch_idx):
        return (self.weight - batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validated.append(self.current_epoch + 1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _validated_after(schedule: str, every_n: int, epochs: int) -> list[int]:
    loader = DataLoader(TensorDataset(torch.ones(2, 1)), batch_size=1)
    module = _Tiny()
    trainer = pl.Trainer(
        max_epochs=epochs,
        check_val_every_n_epoch=every_n,
        num_sanity_val_steps=0,
        callbacks=[ValidationSchedule(schedule)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader, loader)
    return module.validated


@pytest.mark.parametrize(
    "schedule,every_n,epochs,expected",
    [
        ("every_n", 5, 12, [5, 10, 12]),
        ("published", 5, 12, [1, 6, 11, 12]),  # end2end.py: epoch % 5 == 0 or the last
        ("published", 5, 11, [1, 6, 11]),
        ("published", 1, 3, [1, 2, 3]),
    ],
)
def test_validation_follows_the_schedule(schedule, every_n, epochs, expected):
    assert _validated_after(schedule, every_n, epochs) == expected
