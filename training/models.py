"""Generator and discriminator architectures, selected by `--arch`.

Every generator maps (z [N, latent], labels [N] | None) to images [N, 1, 28, 28] in its
`output_range`; every discriminator maps (images, labels | None) to one logit per image.
A class-conditional model (`--conditional`) feeds the label to G as a learned embedding
concatenated to z, and to D through a projection head (Miyato & Koyama, 2018), so the same
bodies serve both forms.

Architectures:
  dcgan           the default, built for quality per compute (see ARCHS for its figures)
  tf-dcgan        the TensorFlow DCGAN tutorial
  upsample-dcgan  the UpSampling2D + stride-1 transposed-conv Keras DCGAN
  mlp             the classic fully connected GAN
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

IMAGE_SHAPE = (1, 28, 28)


@dataclass(frozen=True)
class ArchSpec:
    """An architecture and the hyper-parameters it trains with unless flags say otherwise."""

    name: str
    summary: str
    output_range: tuple[float, float]  # (-1, 1) for tanh outputs, (0, 1) for sigmoid
    defaults: dict = field(default_factory=dict)
    generator_body: Callable[[int, int], nn.Module] | None = None  # (inputs, width) -> body
    discriminator_body: Callable[[int, float], tuple[nn.Module, int]] | None = None
    init: Callable[[nn.Module], None] | None = None  # applied to G and D after building


# --- generators -------------------------------------------------------------------------------

class Generator(nn.Module):
    """Shared front end: the conditional embedding, then an architecture's body."""

    def __init__(self, body: nn.Module, latent_dim: int, num_classes: int, out_act: nn.Module):
        super().__init__()
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, num_classes) if num_classes else None
        self.body = body
        self.out_act = out_act

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.out_act(self.body(z))


class Reshape(nn.Module):
    def __init__(self, *shape: int):
        super().__init__()
        self.shape = shape

    def forward(self, x):
        return x.view(x.shape[0], *self.shape)


def _dcgan_g(in_dim: int, w: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_dim, 4 * w * 7 * 7, bias=False),
        nn.BatchNorm1d(4 * w * 7 * 7), nn.ReLU(True),
        Reshape(4 * w, 7, 7),                                               # (4w) x 7 x 7
        nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1, bias=False),
        nn.BatchNorm2d(2 * w), nn.ReLU(True),                               # (2w) x 14 x 14
        nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False),
        nn.BatchNorm2d(w), nn.ReLU(True),                                   # w x 28 x 28
        nn.Conv2d(w, 1, 3, 1, 1),                                           # 1 x 28 x 28
    )


def _tf_dcgan_g(in_dim: int, w: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_dim, w * 7 * 7, bias=False),
        nn.BatchNorm1d(w * 7 * 7), nn.LeakyReLU(0.3),                       # Keras default slope
        Reshape(w, 7, 7),                                                   # 256 x 7 x 7
        nn.ConvTranspose2d(w, w // 2, 5, 1, 2, bias=False),
        nn.BatchNorm2d(w // 2), nn.LeakyReLU(0.3),                          # 128 x 7 x 7
        nn.ConvTranspose2d(w // 2, w // 4, 5, 2, 2, output_padding=1, bias=False),
        nn.BatchNorm2d(w // 4), nn.LeakyReLU(0.3),                          # 64 x 14 x 14
        nn.ConvTranspose2d(w // 4, 1, 5, 2, 2, output_padding=1, bias=False),  # 1 x 28 x 28
    )


def _upsample_dcgan_g(in_dim: int, w: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_dim, w * 7 * 7),
        nn.BatchNorm1d(w * 7 * 7, momentum=0.1), nn.ReLU(True),
        Reshape(w, 7, 7), nn.Dropout(0.4),                                  # 192 x 7 x 7
        nn.Upsample(scale_factor=2, mode="nearest"),                        # 192 x 14 x 14
        nn.ConvTranspose2d(w, w // 2, 5, 1, 2),
        nn.BatchNorm2d(w // 2), nn.ReLU(True),                              # 96 x 14 x 14
        nn.Upsample(scale_factor=2, mode="nearest"),                        # 96 x 28 x 28
        nn.ConvTranspose2d(w // 2, w // 4, 5, 1, 2),
        nn.BatchNorm2d(w // 4), nn.ReLU(True),                              # 48 x 28 x 28
        nn.ConvTranspose2d(w // 4, w // 8, 5, 1, 2),
        nn.BatchNorm2d(w // 8), nn.ReLU(True),                              # 24 x 28 x 28
        nn.ConvTranspose2d(w // 8, 1, 5, 1, 2),                             # 1 x 28 x 28
    )


def _mlp_g(in_dim: int, w: int) -> nn.Module:
    # Keras BatchNormalization(momentum=0.8) keeps 80% of the old mean: torch momentum 0.2.
    return nn.Sequential(
        nn.Linear(in_dim, w), nn.LeakyReLU(0.2), nn.BatchNorm1d(w, momentum=0.2),
        nn.Linear(w, 2 * w), nn.LeakyReLU(0.2), nn.BatchNorm1d(2 * w, momentum=0.2),
        nn.Linear(2 * w, 4 * w), nn.LeakyReLU(0.2), nn.BatchNorm1d(4 * w, momentum=0.2),
        nn.Linear(4 * w, 28 * 28),
        Reshape(*IMAGE_SHAPE),                                              # 1 x 28 x 28
    )


# --- discriminators ---------------------------------------------------------------------------

class Discriminator(nn.Module):
    """An architecture's feature body, a linear head, (conditional) a projection term,
    (`classify`, AC-GAN) a class head on the same features and (`twin`, TAC-GAN) a second
    class head that learns the classes of fakes."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int,
                 classify: bool = False, twin: bool = False):
        super().__init__()
        self.body = body
        self.head = nn.Linear(feature_dim, 1)
        self.project = nn.Embedding(num_classes, feature_dim) if num_classes else None
        self.classify = nn.Linear(feature_dim, num_classes) if classify else None
        self.twin = nn.Linear(feature_dim, num_classes) if twin else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                classes: bool = False):
        """One logit per image; with `classes`, (logits, class logits [N, num_classes], twin
        class logits [N, num_classes] or None)."""
        h = self.body(x).flatten(1)
        logit = self.head(h).squeeze(1)
        if self.project is not None:
            logit = logit + (self.project(labels) * h).sum(dim=1)
        if not classes:
            return logit
        return logit, self.classify(h), None if self.twin is None else self.twin(h)


def _dcgan_d(w: int, p: float) -> tuple[nn.Module, int]:
    # No BatchNorm: D sees real and fake images in one forward pass (one pass is what
    # DistributedDataParallel allows per backward), and without BN that equals two passes.
    return nn.Sequential(
        nn.Conv2d(1, w, 4, 2, 1), nn.LeakyReLU(0.2, True), nn.Dropout(p),          # w x 14 x 14
        nn.Conv2d(w, 2 * w, 4, 2, 1), nn.LeakyReLU(0.2, True), nn.Dropout(p),      # 2w x 7 x 7
    ), 2 * w * 7 * 7


def _tf_dcgan_d(w: int, p: float) -> tuple[nn.Module, int]:
    return nn.Sequential(
        nn.Conv2d(1, w, 5, 2, 2), nn.LeakyReLU(0.3), nn.Dropout(p),                # 64 x 14 x 14
        nn.Conv2d(w, 2 * w, 5, 2, 2), nn.LeakyReLU(0.3), nn.Dropout(p),            # 128 x 7 x 7
    ), 2 * w * 7 * 7


def _upsample_dcgan_d(w: int, p: float) -> tuple[nn.Module, int]:
    layers, c = [], 1
    for i in range(4):                                      # 32x14x14, 64x7x7, 128x4x4, 256x2x2
        layers += [nn.Conv2d(c, w * 2 ** i, 5, 2, 2), nn.LeakyReLU(0.2), nn.Dropout(p)]
        c = w * 2 ** i
    return nn.Sequential(*layers), c * 2 * 2


def _mlp_d(w: int, p: float) -> tuple[nn.Module, int]:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(28 * 28, w), nn.LeakyReLU(0.2), nn.Dropout(p),
        nn.Linear(w, w // 2), nn.LeakyReLU(0.2), nn.Dropout(p),
    ), w // 2


def build_generator(arch: str, latent_dim: int, num_classes: int, g_width: int) -> Generator:
    spec = ARCHS[arch]
    out_act = nn.Sigmoid() if spec.output_range == (0.0, 1.0) else nn.Tanh()
    g = Generator(spec.generator_body(latent_dim + num_classes, g_width), latent_dim,
                  num_classes, out_act)
    if spec.init:
        g.apply(spec.init)
    return g


def build_discriminator(arch: str, num_classes: int, d_width: int, d_dropout: float,
                        classify: bool = False, twin: bool = False) -> Discriminator:
    spec = ARCHS[arch]
    body, feature_dim = spec.discriminator_body(d_width, d_dropout)
    d = Discriminator(body, feature_dim, num_classes, classify, twin)
    if spec.init:
        d.apply(spec.init)
    return d


def _dcgan_init(m: nn.Module) -> None:
    # Radford et al.: N(0, 0.02) weights, BN scales N(1, 0.02); it steadies the first epoch.
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# --- the architectures: each one's layers, initialisation and training defaults -----------

ARCHS: dict[str, ArchSpec] = {
    "dcgan": ArchSpec(
        "dcgan",
        "Linear->128x7x7, ConvT 4x4 s2 ->64x14x14, ConvT 4x4 s2 ->32x28x28, Conv 3x3 ->1, tanh "
        "(BN+ReLU); D: Conv 4x4 s2 48, Conv 4x4 s2 96 (LeakyReLU 0.2, no BN), linear head. "
        "Adam 4e-4 betas (0, 0.99), constant then linear decay over the second half, batch 64, "
        "EMA of G weights 0.995.",
        (-1.0, 1.0),
        # D width 48, not 64: the same quality at 3 epochs (docs/model-comparison.md) for about
        # a fifth less compute per step. The optimiser settings won the recipe ablation
        # (docs/benchmarks/recipe-ablation.md): FD 5.65 after 4 epochs against 8.2-8.6.
        dict(batch_size=64, lr_g=4e-4, lr_d=4e-4, beta1=0.0, beta2=0.99, optimizer="adam",
             lr_schedule="linear", d_dropout=0.0, ema_decay=0.995, g_width=32, d_width=48),
        generator_body=_dcgan_g, discriminator_body=_dcgan_d, init=_dcgan_init,
    ),
    "tf-dcgan": ArchSpec(
        "tf-dcgan",
        "TensorFlow DCGAN tutorial: Dense->256x7x7, ConvT 5x5 s1 128, ConvT 5x5 s2 64, ConvT 5x5 "
        "s2 1, tanh (BN+LeakyReLU); D: Conv 5x5 s2 64, Conv 5x5 s2 128, LeakyReLU, dropout 0.3. "
        "Adam 1e-4 (Keras default b1 0.9), batch 256.",
        (-1.0, 1.0),
        dict(batch_size=256, lr_g=1e-4, lr_d=1e-4, beta1=0.9, beta2=0.999, optimizer="adam",
             lr_schedule="constant", d_dropout=0.3, ema_decay=0.0, g_width=256, d_width=64),
        generator_body=_tf_dcgan_g, discriminator_body=_tf_dcgan_d,
    ),
    "upsample-dcgan": ArchSpec(
        "upsample-dcgan",
        "Keras 'GAN by example' DCGAN: Dense->192x7x7 (dropout 0.4), UpSampling, ConvT 5x5 s1 "
        "96, UpSampling, ConvT 5x5 s1 48, ConvT 5x5 s1 24, ConvT 5x5 s1 1, sigmoid on [0,1] data; "
        "D: four Conv 5x5 s2 32/64/128/256, LeakyReLU 0.2, dropout 0.4. RMSprop, D 2e-4, G 1e-4, "
        "batch 256.",
        (0.0, 1.0),
        dict(batch_size=256, lr_g=1e-4, lr_d=2e-4, beta1=0.5, beta2=0.999, optimizer="rmsprop",
             lr_schedule="constant", d_dropout=0.4, ema_decay=0.0, g_width=192, d_width=32),
        generator_body=_upsample_dcgan_g, discriminator_body=_upsample_dcgan_d,
    ),
    "mlp": ArchSpec(
        "mlp",
        "Fully connected GAN: G 256-512-1024-784 (LeakyReLU 0.2, BatchNorm), tanh; D 512-256 "
        "(LeakyReLU 0.2, dropout 0.3). Adam 2e-4 b1 0.5, batch 64.",
        (-1.0, 1.0),
        dict(batch_size=64, lr_g=2e-4, lr_d=2e-4, beta1=0.5, beta2=0.999, optimizer="adam",
             lr_schedule="constant", d_dropout=0.3, ema_decay=0.0, g_width=256, d_width=512),
        generator_body=_mlp_g, discriminator_body=_mlp_d,
    ),
}


# --- figures ----------------------------------------------------------------------------------

def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass per input row, counted with forward hooks."""
    total = 0

    def hook(m, args, out):
        nonlocal total
        if isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
        elif isinstance(m, nn.Conv2d):
            total += out.shape[2] * out.shape[3] * m.out_channels * \
                (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.ConvTranspose2d):
            x = args[0]
            total += x.shape[2] * x.shape[3] * m.in_channels * m.out_channels * \
                m.kernel_size[0] * m.kernel_size[1] // m.groups

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    was_training = module.training
    module.eval()
    with torch.no_grad():
        module(*inputs)
    module.train(was_training)
    for h in handles:
        h.remove()
    return total


def to_uint8(images: torch.Tensor, output_range: tuple[float, float]) -> torch.Tensor:
    """Map generator output in `output_range` to uint8 pixels: scale, round, clip, cast.

    The exported graph ends with exactly this, so the server only copies bytes.
    """
    lo, hi = output_range
    return torch.clamp(torch.round((images - lo) * (255.0 / (hi - lo))), 0, 255).to(torch.uint8)


def from_uint8(images: torch.Tensor, output_range: tuple[float, float]) -> torch.Tensor:
    """Map uint8 pixels to floats in `output_range` (what D sees of real data)."""
    lo, hi = output_range
    return images.float() * ((hi - lo) / 255.0) + lo
