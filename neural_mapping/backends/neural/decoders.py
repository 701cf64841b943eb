"""Decoders: features (grid mode) or positions (iMAP mode) -> SDF (truncation units) and color.

Grid mode (ESLAM / Co-SLAM size): geometry ``[coarse | fine] (2C) -> H -> H -> 1`` and color
``[color | fine] (2C) -> H -> H -> 3``, ReLU.  The outputs are *residuals*: with the TSDF
prior, ``sdf = prior_sdf + r`` and ``color = prior_color + c``; without it ``sdf = 1 + r``
(1 = free / unknown) and ``color = sigmoid(c)``.  The last layers start at zero, so a new map
decodes to its prior exactly (and the field is the TSDF's until the optimiser has evidence).

iMAP mode: one MLP on a Fourier positional encoding of the world point (``L`` octaves of
``2^k pi x``, x in metres, plus x), three hidden layers of width ``2 H``, 4 outputs (sdf
residual on 1, color logits).  It is the whole map: every parameter is global.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _mlp(n_in: int, hidden: int, n_out: int, layers: int = 2) -> nn.Sequential:
    mods, d = [], n_in
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    last = nn.Linear(d, n_out)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    mods.append(last)
    return nn.Sequential(*mods)


class GridDecoders(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.geometry = _mlp(2 * channels, hidden, 1)
        self.color = _mlp(2 * channels, hidden, 3)

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor, color: torch.Tensor):
        """``(sdf residual [N], color residual [N, 3])``."""
        r = self.geometry(torch.cat([coarse, fine], dim=-1)).squeeze(-1)
        c = self.color(torch.cat([color, fine], dim=-1))
        return r, c


class PositionalMLP(nn.Module):
    def __init__(self, frequencies: int, hidden: int):
        super().__init__()
        self.register_buffer("freqs", (2.0 ** torch.arange(frequencies)) * math.pi, persistent=False)
        n_in = 3 + 6 * frequencies
        self.net = _mlp(n_in, 2 * hidden, 4, layers=3)

    def forward(self, pts: torch.Tensor):
        x = pts[..., None] * self.freqs  # [N, 3, L]
        enc = torch.cat([pts, torch.sin(x).flatten(-2), torch.cos(x).flatten(-2)], dim=-1)
        out = self.net(enc)
        return out[..., 0], out[..., 1:]


def make_decoders(cfg, device: torch.device, seed: int) -> nn.Module:
    """Seeded construction (the global RNG is left untouched)."""
    n = cfg.neural
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if n.neural_mode == "imap":
            dec = PositionalMLP(n.neural_imap_frequencies, n.neural_hidden)
        else:
            dec = GridDecoders(n.neural_channels, n.neural_hidden)
    return dec.to(device)
