"""Writes tests/condensed/data/saved_before_layout.pt with the code as of commit b4e9d52 (before the
kernels/ layout move); kept so a test checks that files saved by earlier releases still load."""
import torch
from lightning_srigl.condensed.attention import ProjectedAttention
from lightning_srigl.condensed.conv import CondensedConv1d, CondensedConv2d
from lightning_srigl.condensed.csr import CSRLinear
from lightning_srigl.condensed.linear import CondensedLinear
from torch import nn

from lightning_srigl.condensed.serialization import save_condensed

torch.manual_seed(0)
def mask_rows(shape, k):
    out = shape[0]; fan = int(torch.tensor(shape[1:]).prod())
    m = torch.zeros(out, fan, dtype=torch.bool)
    for r in range(out):
        if r == 1: continue  # an ablated neuron
        m[r, torch.randperm(fan)[:k]] = True
    return m.view(shape)

lin = nn.Linear(12, 6); lm = mask_rows(lin.weight.shape, 4)
conv = nn.Conv2d(3, 4, 3, padding=1); cm = mask_rows(conv.weight.shape, 7)
conv1 = nn.Conv1d(4, 4, 3); c1m = mask_rows(conv1.weight.shape, 5)
csr = nn.Linear(6, 5); sm = mask_rows(csr.weight.shape, 3)
attn = nn.MultiheadAttention(8, 2, batch_first=True)
model = nn.ModuleDict({
    "conv": nn.Sequential(CondensedConv2d.from_masked(conv, cm), nn.ReLU()),
    "conv1d": CondensedConv1d.from_masked(conv1, c1m),
    "attention": ProjectedAttention.from_masked(attn, {"in_proj_weight": mask_rows((24, 8), 4)}, mask_rows((8, 8), 3)),
    "mlp": nn.Sequential(CondensedLinear.from_masked(lin, lm), nn.ReLU(), CSRLinear.from_masked(csr, sm)),
})
model.eval()
print(save_condensed(model, "tests/condensed/data/saved_before_layout.pt"))
x = torch.randn(2, 3, 5, 5); y = torch.randn(2, 4, 7); z = torch.randn(3, 12); q = torch.randn(2, 3, 8)
with torch.no_grad():
    outs = {"x": x, "y": y, "z": z, "conv": model["conv"](x), "conv1d": model["conv1d"](y), "mlp": model["mlp"](z), "q": q, "attention": model["attention"](q, q, q, need_weights=False)[0]}
torch.save(outs, "tests/condensed/data/saved_before_layout_io.pt")
