"""ZS3Net's generator (Bucher et al., NeurIPS 2019), method.md §7: a context-free generative
moment-matching network, [class embedding ‖ U(0, 1) noise] -> pixel feature, trained by MMD."""

import torch
from torch import nn


class GMMNGenerator(nn.Module):
    """Linear(2E, hidden) -> LeakyReLU(0.2) -> Dropout -> Linear(hidden, F) (ZS3Net: hidden
    256, dropout 0.5); the noise has the embedding's dimension E."""

    def __init__(self, embed_dim: int, feature_dim: int, hidden_dim: int = 256,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.embed_dim = self.noise_dim = embed_dim
        self.feature_dim = feature_dim
        self.layers = nn.Sequential(nn.Linear(2 * embed_dim, hidden_dim), nn.LeakyReLU(0.2),
                                    nn.Dropout(dropout), nn.Linear(hidden_dim, feature_dim))

    def forward(self, embeddings: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """embeddings (N, E) and noise (N, E) -> features (N, F)."""
        return self.layers(torch.cat([embeddings, noise], dim=1))

    def generate(self, embeddings: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Features (N, F) for embeddings (N, E), the U(0, 1) noise drawn from CPU `generator`."""
        noise = torch.rand(embeddings.shape[0], self.noise_dim, generator=generator)
        return self(embeddings, noise.to(embeddings.device, embeddings.dtype))
