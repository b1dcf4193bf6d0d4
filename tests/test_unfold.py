"""One conv unrolling for every user (chip forward, method statistics, chip-in-the-loop recordings), checked
against torch's own convolution on every stride, dilation, padding and padding mode; data-flow order."""

import pytest
import torch
from torch import nn

from ittrna.errors import InputError
from ittrna.graph import dataflow_order, mapped_modules
from ittrna.mapping import (
    conv_row_power,
    conv_rows,
    grouped_matmul,
    matrix_to_weight,
    output_to_rows,
    rows_to_output,
    weight_to_matrix,
)

CASES = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, padding="same"),
    dict(kernel_size=4, padding="same", dilation=2),  # even kernel: PyTorch pads one more on the right
    dict(kernel_size=3, padding="valid", stride=2),
    dict(kernel_size=(3, 2), padding=(2, 1), stride=(2, 1), dilation=(1, 2)),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=3, padding="same", padding_mode="circular"),
    dict(kernel_size=3, padding=2, padding_mode="replicate", stride=3),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("channels", [(3, 5, 1), (6, 4, 2), (4, 8, 4)], ids=["dense", "grouped", "depthwise-x2"])
def test_rows_times_matrix_is_the_convolution(kw, dims, channels):
    cin, cout, groups = channels
    if dims == 1:
        kw = {k: (v[0] if isinstance(v, tuple) else v) for k, v in kw.items()}
    g = torch.Generator().manual_seed(0)
    conv = (nn.Conv1d if dims == 1 else nn.Conv2d)(cin, cout, groups=groups, **kw).double()
    x = torch.randn((2, cin, 11) if dims == 1 else (2, cin, 11, 9), generator=g, dtype=torch.float64)
    want = conv(x) - conv.bias.view(1, -1, *([1] * dims))
    rows, spatial = conv_rows(x, conv)
    product = grouped_matmul(rows, weight_to_matrix(conv.weight), groups)
    got = rows_to_output(product, x.shape[0], spatial)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-12)
    assert torch.equal(output_to_rows(got), product)  # the inverse layout
    power, count = conv_row_power(x, conv)  # the rows' statistics without the unrolled copy
    assert count == rows.shape[0] and torch.allclose(power, (rows**2).sum(0), rtol=1e-12)


def test_weight_matrix_round_trip():
    w = torch.randn(4, 3, 2, 5)
    assert torch.equal(matrix_to_weight(weight_to_matrix(w), tuple(w.shape)), w)


def test_foreign_layers_are_refused_and_a_grouped_matrix_is_its_groups_side_by_side():
    w = torch.randn(8, 2, 3, 3)  # 4 groups of 2 input and 2 output channels
    x = torch.randn(5, 4 * 18)
    blocks = torch.block_diag(*[weight_to_matrix(w[2 * q: 2 * q + 2]) for q in range(4)])  # (72, 8)
    assert torch.allclose(grouped_matmul(x, weight_to_matrix(w), 4), x @ blocks, atol=1e-5)
    with pytest.raises(InputError, match="Conv1d or Conv2d"):
        conv_rows(torch.zeros(1, 4), nn.Linear(4, 4))  # type: ignore[arg-type]


class Branchy(nn.Module):
    """Definition order (head, tail, skip, mid) differs from data-flow order (mid, skip, head, tail)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 4)
        self.tail = nn.Linear(4, 2)
        self.skip = nn.Linear(8, 8)
        self.mid = nn.Sequential(nn.Conv2d(1, 2, 3, padding="same"), nn.Flatten(), nn.Linear(2 * 2 * 2, 8))
        self.unused = nn.Linear(3, 3)

    def forward(self, x):
        h = self.mid(x)
        h = h + self.skip(h)
        return self.tail(torch.relu(self.head(h)))


def test_dataflow_order_follows_the_forward_pass_not_definitions():
    model = Branchy()
    names = [n for n, _ in mapped_modules(model)]
    assert names == ["head", "tail", "skip", "mid.0", "mid.2", "unused"]
    order = dataflow_order(model, torch.zeros(5, 1, 2, 2), names)
    assert order == ["mid.0", "mid.2", "skip", "head", "tail", "unused"]  # never-called layers last
    assert next(model.parameters()).device.type == "cpu"  # traced on a meta copy


def test_dataflow_order_falls_back_to_a_real_pass():
    class DataDependent(Branchy):
        def forward(self, x):
            h = self.mid(x)
            if float(h.detach().sum()) > 1e9:  # needs real values: cannot run on the meta device
                h = h * 0
            return self.tail(self.head(h + self.skip(h)))

    model = DataDependent().train()
    assert dataflow_order(model, torch.zeros(5, 1, 2, 2), ["tail", "head", "mid.0"]) == ["mid.0", "head", "tail"]
    assert model.training  # its mode restored


def test_filter_fn_chooses_layers():
    model = Branchy()
    names = [n for n, _ in mapped_modules(model, lambda m, n: isinstance(m, nn.Linear) and n != "unused")]
    assert names == ["head", "tail", "skip", "mid.2"]


def test_the_real_pass_fallback_restores_every_modules_own_mode():
    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x):
            if float(x.detach().sum()) > 1e9:  # needs real values
                x = x * 0
            return self.bn(self.fc(x))

    model = Frozen().train()
    model.bn.eval()  # a fine-tuning pattern: statistics frozen
    assert dataflow_order(model, torch.zeros(2, 4), ["fc"]) == ["fc"]
    assert model.training and model.fc.training and not model.bn.training
    model.extra = nn.BatchNorm1d(4)  # defined, never called
    assert dataflow_order(model, torch.zeros(2, 4), ["extra", "bn"], uncalled=False) == ["bn"]
