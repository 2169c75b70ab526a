"""AccelerateCallback considers convolutions and attention projections, trained sparse by SRigLCallback."""

import copy

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from lightning_srigl import SRigLCallback
from lightning_srigl.callbacks import AccelerateCallback


class ConvAttention(pl.LightningModule):
    """A conv stem, one attention block over the pixels and a classifier: every sparse kind but Conv1D."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1)
        )
        self.attention = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)  # (B, 16, 32)
        tokens = tokens + self.attention(tokens, tokens, tokens, need_weights=False)[0]
        return self.head(tokens.mean(dim=1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class KeepMaskedDense(pl.Callback):
    def on_fit_end(self, trainer, pl_module):
        self.model = copy.deepcopy(pl_module).eval()


def test_conv_and_attention_layers_are_timed_and_the_accelerated_model_is_exact(tmp_path):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 3, 8, 8), torch.randint(0, 5, (32,)))
    module, keep = ConvAttention(), KeepMaskedDense()
    accelerate = AccelerateCallback(candidates=["dense", "condensed"], verbose=False)
    trainer = pl.Trainer(
        max_steps=6, callbacks=[SRigLCallback(delta_t=2), keep, accelerate], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    rows = {row.name: row for row in accelerate.report.rows}
    assert {"stem.0", "stem.3", "attention", "head"} <= set(rows)
    for name in ("stem.0", "stem.3", "attention"):
        assert "condensed" in rows[name].times, rows[name].skipped
    assert isinstance(module.stem[1], nn.Identity)  # the BatchNorm was folded into the sparse conv
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(module.eval()(x), keep.model(x), atol=1e-4, rtol=1e-4)
