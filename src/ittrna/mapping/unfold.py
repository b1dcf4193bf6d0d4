"""A layer's weight as a crossbar matrix, and a convolution's input as the rows that drive it (im2col).

The one owner of conv unrolling: the chip's tiled forward pass, the methods' input statistics and the
chip-in-the-loop recordings all use :func:`conv_columns` / :func:`conv_rows` / :func:`rows_to_output`, so
they agree on every stride, dilation, padding (numbers, ``"same"``, ``"valid"``) and padding mode.

A weight becomes a matrix of K rows (inputs, word lines) by N columns (outputs, bit lines): ``Linear``
(out, in) -> its transpose (in, out); ``Conv1d``/``Conv2d`` (Cout, Cin, *kernel) -> (Cin * prod(kernel),
Cout), rows ordered as ``F.unfold`` orders them (channel-major, then kernel positions). A grouped
convolution's weight (Cout, Cin / groups, *kernel) becomes (Cin / groups * prod(kernel), Cout) the same way:
column ``j`` belongs to group ``j // (Cout / groups)`` and meets that group's inputs only, so the unrolled
input has ``groups`` blocks of K rows (group-major, as ``F.unfold`` lays out the channels) and
:func:`grouped_matmul` is the layer's product (the tiles hold no zeros of a block-diagonal matrix).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ittrna.errors import InputError

__all__ = ["conv_columns", "conv_padding", "conv_row_power", "conv_rows", "grouped_matmul", "groups_of",
           "matrix_to_weight", "output_to_rows", "row_statistic", "rows_to_output", "weight_to_matrix"]


def groups_of(module: nn.Module) -> int:
    """The column groups of a mapped layer: a convolution's ``groups``, else 1."""
    return int(getattr(module, "groups", 1)) if isinstance(module, (nn.Conv1d, nn.Conv2d)) else 1


def grouped_matmul(x: torch.Tensor, matrix: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """A layer's crossbar product: (B, groups * K) inputs, group-major, and its (K, N) matrix -> (B, N), each
    group's N / groups columns driven by that group's K inputs only (``x @ matrix`` for one group)."""
    if groups == 1:
        return x @ matrix
    b, (k, n) = x.shape[0], matrix.shape
    xg = x.reshape(b, groups, k)  # (B, G, K)
    wg = matrix.reshape(k, groups, n // groups)  # (K, G, N / G)
    return torch.einsum("bgk,kgn->bgn", xg, wg).reshape(b, n)


def row_statistic(values: torch.Tensor, groups: int, n: int) -> torch.Tensor:
    """A statistic of every input row, (groups * K,), as a (K, N)-broadcastable matrix: (K, 1) for one group,
    else (K, N) with each column given its own group's rows (an input's RMS weighs the cells it drives)."""
    if groups == 1:
        return values.reshape(-1, 1)
    per_group = values.reshape(groups, -1).t()  # (K, G)
    return per_group.repeat_interleave(n // groups, dim=1)  # (K, N)


def weight_to_matrix(weight: torch.Tensor) -> torch.Tensor:
    """(out, in) -> (in, out); (Cout, Cin, kh, kw) -> (Cin*kh*kw, Cout)."""
    return weight.reshape(weight.shape[0], -1).t()


def matrix_to_weight(matrix: torch.Tensor, weight_shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`weight_to_matrix`."""
    return matrix.t().reshape(weight_shape)


def conv_padding(conv: nn.Conv1d | nn.Conv2d) -> tuple[int, ...]:
    """The explicit padding of ``conv`` in ``F.pad`` order (last dimension first, (left, right) per
    dimension): numbers as given, ``"valid"`` as zeros, ``"same"`` as PyTorch pads it (total
    dilation * (kernel - 1) per dimension, the extra one on the right/bottom)."""
    kernel, dilation = conv.kernel_size, conv.dilation
    pad: list[int] = []
    for d in reversed(range(len(kernel))):
        if conv.padding == "valid":
            left = right = 0
        elif conv.padding == "same":
            total = dilation[d] * (kernel[d] - 1)
            left, right = total // 2, total - total // 2
        else:
            assert isinstance(conv.padding, tuple)
            left = right = int(conv.padding[d])
        pad += [left, right]
    return tuple(pad)


def conv_columns(x: torch.Tensor, conv: nn.Conv1d | nn.Conv2d) -> tuple[torch.Tensor, tuple[int, ...]]:
    """A convolution's input unrolled as ``F.unfold`` lays it out: (B, Cin, *spatial) -> ((B, K, L),
    out_spatial), column ``l`` the receptive field of output position ``l``, rows in the order of
    :func:`weight_to_matrix`'s rows (for a grouped convolution, ``groups`` blocks of them, group-major). Any
    stride, dilation, padding (``"same"`` included) and padding mode.
    """
    x, kernel, dilation, stride, out = _padded(x, conv)
    cols = F.unfold(x, kernel, dilation=dilation, stride=stride)  # (B, K, L)
    return cols, (out[1:] if isinstance(conv, nn.Conv1d) else out)


def _padded(x: torch.Tensor, conv: nn.Conv1d | nn.Conv2d) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int],
                                                                    tuple[int, int], tuple[int, int]]:
    """A convolution's input padded as the layer pads it, as 2-D (a 1-D one over a height of 1), with the
    2-D kernel, dilation, stride and output size."""
    if not isinstance(conv, (nn.Conv1d, nn.Conv2d)):
        raise InputError(f"conv unrolling takes a Conv1d or Conv2d, got {type(conv).__name__}")
    one_d = isinstance(conv, nn.Conv1d)
    if x.dim() != (3 if one_d else 4):
        raise InputError(f"conv unrolling: input of shape {tuple(x.shape)} for a {type(conv).__name__}")
    pad = conv_padding(conv)
    if any(pad):
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = F.pad(x, pad, mode=mode)
    if one_d:  # a 1-D convolution is a 2-D one over a height of 1
        x = x.unsqueeze(2)
        kernel, dilation, stride = (1, conv.kernel_size[0]), (1, conv.dilation[0]), (1, conv.stride[0])
    else:
        kernel, dilation, stride = conv.kernel_size, conv.dilation, conv.stride  # type: ignore[assignment]
    h, w = x.shape[-2:]
    oh = (h - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (w - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    return x, kernel, dilation, stride, (oh, ow)


def conv_row_power(x: torch.Tensor, conv: nn.Conv1d | nn.Conv2d) -> tuple[torch.Tensor, int]:
    """(sum of squares of every unrolled input row (groups * K,), rows counted): what
    ``(conv_columns(x, conv)[0] ** 2).sum((0, 2))`` gives, one strided window per kernel position instead of
    the K x L unrolled copy (for the input statistics of a large batch)."""
    x, (kh, kw), (dh, dw), (sh, sw), (oh, ow) = _padded(x, conv)
    sq = x * x  # (B, C, H, W)
    sums = [sq[:, :, i * dh: i * dh + (oh - 1) * sh + 1: sh, j * dw: j * dw + (ow - 1) * sw + 1: sw].sum((0, 2, 3))
            for i in range(kh) for j in range(kw)]  # kh * kw of (C,)
    return torch.stack(sums, dim=1).reshape(-1), x.shape[0] * oh * ow  # channel-major, then kernel positions


def conv_rows(x: torch.Tensor, conv: nn.Conv1d | nn.Conv2d) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The rows that drive a convolution's crossbar matrix: (B, Cin, *spatial) -> ((B * L, groups * K),
    out_spatial).

    Row ``b * L + l`` is the receptive field of output position ``l`` of sample ``b`` (see
    :func:`conv_columns`), so ``rows_to_output(grouped_matmul(conv_rows(x, conv)[0],
    weight_to_matrix(conv.weight), conv.groups), ...)`` is the convolution without bias.
    """
    cols, spatial = conv_columns(x, conv)  # (B, K, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1]), spatial  # (B*L, K)


def rows_to_output(y: torch.Tensor, batch: int, out_spatial: tuple[int, ...]) -> torch.Tensor:
    """Inverse of the row layout of :func:`conv_rows` on the output side: (B * L, N) -> (B, N, *out_spatial)."""
    n = y.shape[-1]
    return y.reshape(batch, -1, n).transpose(1, 2).reshape(batch, n, *out_spatial)


def output_to_rows(y: torch.Tensor) -> torch.Tensor:
    """A convolution's (B, N, *spatial) output as (B * L, N) rows, the inverse of :func:`rows_to_output`."""
    b, n = y.shape[:2]
    return y.reshape(b, n, -1).transpose(1, 2).reshape(-1, n)
