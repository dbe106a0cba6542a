"""ZS3Net's generator (Bucher et al., NeurIPS 2019), method.md §7: a generative moment-matching
network (GMMN) that maps a class embedding and uniform noise to a pixel feature.

    [embedding (E) ‖ noise U(0, 1) (E)] -> Linear(2E, hidden) -> LeakyReLU(0.2) -> Dropout(p)
                                       -> Linear(hidden, F)

It is context-free: the noise carries no information about the pixel's surroundings (CaGNet's
contextual latent code is exactly what replaces it). Trained with the multi-kernel MMD between
generated and real features of each class (`cagnet.baselines.zs3net.generator_loss`).
"""

from __future__ import annotations

import torch
from torch import nn


class GMMNGenerator(nn.Module):
    """Pixel rows in, pixel rows out.

    Args:
        embed_dim: E, the class-embedding dimension (the noise has the same dimension).
        feature_dim: F, the dimension of the features to generate.
        hidden_dim: width of the hidden layer (256 in ZS3Net).
        dropout: dropout after the hidden layer (0.5 in ZS3Net).
    """

    def __init__(self, embed_dim: int, feature_dim: int, hidden_dim: int = 256,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.noise_dim = embed_dim
        self.feature_dim = feature_dim
        self.layers = nn.Sequential(nn.Linear(2 * embed_dim, hidden_dim), nn.LeakyReLU(0.2),
                                    nn.Dropout(dropout), nn.Linear(hidden_dim, feature_dim))

    def forward(self, embeddings: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """embeddings (N, E) and noise (N, E) -> features (N, F)."""
        return self.layers(torch.cat([embeddings, noise], dim=1))

    def generate(self, embeddings: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Features (N, F) for the class embeddings (N, E), with fresh U(0, 1) noise drawn
        from `generator` (a CPU generator; the noise is moved to the embeddings' device)."""
        noise = torch.rand(embeddings.shape[0], self.noise_dim, generator=generator)
        return self(embeddings, noise.to(embeddings.device, embeddings.dtype))
