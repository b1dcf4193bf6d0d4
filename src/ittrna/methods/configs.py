"""Every registered method's settings: validated frozen dataclasses whose fields carry docstrings and ranges.

Off-device methods are steps of one pipeline (program -> remap -> retraining), so their configs extend each
other's fields. A method that *runs another registered method* holds that method's config as a field instead
(composition): ``ChipLoopConfig.program`` (the programming that starts ``ondevice``/``threshold``) and
``CodesignConfig.base`` (the off-device start of ``codesign``); the method calls its base through the
registry with that config (:func:`ittrna.methods.base.run`), and its identity (the store key) covers the
base's name, version and settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ittrna.config import ConfigError, parse_time
from ittrna.methods.base import MethodConfig

WIRE_CELLS = ("written", "all")
"""The values of ``ProgramConfig.wire_cells`` (which cells wire compensation lifts; one list)."""

__all__ = [
    "AftConfig",
    "BnChipConfig",
    "BnConfig",
    "ChipLoopConfig",
    "CodesignConfig",
    "DynamicConfig",
    "FatConfig",
    "NoiseConfig",
    "NoneConfig",
    "ProgramConfig",
    "RemapConfig",
    "RemapFatConfig",
    "RetrainConfig",
    "ThresholdConfig",
]


@dataclass(frozen=True)
class NoneConfig(MethodConfig):
    """``none`` has no settings."""

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        pass


@dataclass(frozen=True)
class ProgramConfig(NoneConfig):
    """Defect-aware programming and its scale search."""

    headroom_min: float = 0.1
    """Smallest headroom h tried: the layer scale is s = h * max|w| (weights beyond s are clipped).
    Accepted (0, 1]."""

    headroom_steps: int = 8
    """Headrooms tried per layer, log-spaced from ``headroom_min`` to 1. Accepted [1, 64]."""

    search_passes: int = 2
    """Coordinate-descent passes over the layers. Accepted [1, 10]."""

    search_images: int = 5000
    """Validation images the scale search scores on. Accepted [100, 1000000]."""

    search_z: float = 2.0
    """A headroom replaces the current one only if it wins significantly on the validation images: of the
    images the two classify differently, it must get b right and the current c, with b - c > z·√(b + c) (a
    paired sign test; z = 2 is about 95 %). Without it the search clipped a healthy chip's weights for a
    one-image gain that held-out images did not confirm (version 1 lost 0.04 pp on the ideal chip). Accepted
    [0, 10]."""

    search: str = "accuracy"
    """How each layer's headroom is chosen. ``accuracy``: coordinate descent on the host model's validation
    accuracy, end to end (layers x ``headroom_steps`` x ``search_passes`` scored passes over ``search_images``
    images: fine for a few layers, slow for a ResNet). ``output``: per layer, the headroom whose realised
    matrix minimises the expected output error E|x (W_eff - W)|^2 over that layer's inputs in the software
    model (their second moments from ``output_images`` training images, ``output_rows`` rows per layer): one
    pass for all layers and a K x K product per candidate, so its cost grows with the model, not with layers x
    candidates. On a healthy chip both keep every weight (headroom 1). Accepted ``accuracy``, ``output``."""

    output_images: int = 64
    """Training images whose layer inputs the ``output`` search uses. Accepted [1, 100000]."""

    output_rows: int = 4096
    """At most this many input rows (a convolution: image x position) per layer, drawn at random from the
    method's generator, in the ``output`` search's second moments. Accepted [16, 10000000]."""

    wires: str = "ignore"
    """IR drop in the programming. ``ignore``: targets as if the wires were ideal. ``compensate``: the final
    targets are pre-distorted so that each tile, through the design's wires (``wires.r_wire``, known from the
    design), presents the conductances meant, as the host model of the measured map predicts them
    (:meth:`ittrna.methods.hostmodel.HostChip.wire_compensated`); the layers' targets are then explicit. The
    scale search and any retraining still model ideal wires. Accepted ``ignore``, ``compensate``."""

    wire_iterations: int = 2
    """Fixed-point passes of the ``compensate`` pre-distortion (each an exact or iterative solve of every tile
    of a layer's arrays). Accepted [1, 20]."""

    wire_cells: str = "written"
    """Which healthy cells the ``compensate`` pre-distortion lifts. ``written``: only those programming writes
    anyway (target above Gmin); a cell left at Gmin (the idle cell of a pair, padding, unused spare rows) stays
    unwritten, so compensation costs no extra writes, and its attenuated Gmin current is left as it is.
    ``all``: every healthy cell, those at Gmin too: their small current is made exact at the price of writing
    every cell of every tile (on the ``mlp`` (784-256-128-10) at 128x128 tiles, 557,056 writes instead of
    234,752; the behaviour of ``compensate`` before this field existed). Acts only with ``wires =
    "compensate"``. Accepted ``written``, ``all``."""

    _added: ClassVar[dict[str, object]] = {"search": "accuracy", "output_images": 64, "output_rows": 4096,
                                           "wires": "ignore", "wire_iterations": 2, "wire_cells": "all"}
    _acts_with: ClassVar[dict[str, tuple[str, object]]] = {"wire_cells": ("wires", "compensate")}

    def _validate(self) -> None:
        super()._validate()
        self._range("headroom_min", 0.0, 1.0, lo_open=True)
        self._int_range("headroom_steps", 1, 64)
        self._int_range("search_passes", 1, 10)
        self._int_range("search_images", 100, 1_000_000)
        self._range("search_z", 0.0, 10.0)
        self._choice("search", ("accuracy", "output"))
        self._int_range("output_images", 1, 100_000)
        self._int_range("output_rows", 16, 10_000_000)
        self._choice("wires", ("ignore", "compensate"))
        self._int_range("wire_iterations", 1, 20)
        self._choice("wire_cells", WIRE_CELLS)


@dataclass(frozen=True)
class RemapConfig(ProgramConfig):
    """Optimal row routing (and column polarity) per tile."""

    polarity: bool = True
    """Also choose each column's polarity (swap G+/G- roles; negated digitally)."""

    rounds: int = 2
    """Alternations of routing (optimal assignment) and polarity. Accepted [1, 10]."""

    importance_images: int = 2048
    """Training images whose RMS input per row weights the deviation. Accepted [16, 1000000]."""

    def _validate(self) -> None:
        super()._validate()
        if not isinstance(self.polarity, bool):
            raise ConfigError(f"method.polarity = {self.polarity!r}; accepted true/false")
        self._int_range("rounds", 1, 10)
        self._int_range("importance_images", 16, 1_000_000)


@dataclass(frozen=True)
class RetrainConfig(NoneConfig):
    """Settings shared by the methods that retrain (Adam with cosine decay, as the original training)."""

    epochs: int = 3
    """Retraining epochs (the issue's budget: at most 3 per chip). Accepted [0, 1000]."""

    lr: float = 1e-3
    """Adam peak learning rate, cosine-decayed; the original training's peak (1e-4 lost 1.5 pp in the
    prototype). Accepted (0, 10]."""

    batch_size: int = 64
    """Mini-batch size. Accepted [1, 65536]."""

    distill: float = 0.0
    """Weight of distillation from the software model's logits in the retraining loss (Hinton et al. 2015);
    the rest is cross-entropy on the labels. 1 retrains towards what the software model computes. On
    development chips (seeds 100-102, mlp, SAF 20 %, validation images the method never saw) it gave loss
    0.11 pp for ``aft`` against -0.04 with labels only, and 0.05 ± 0.02 against 0.00 ± 0.28 for ``remap-fat``
    (docs/results/dev-distill-mlp.jsonl): no gain in the mean, so labels only is the default. Accepted [0, 1]."""

    temperature: float = 1.0
    """Distillation temperature T (the KL term is scaled by T^2). Accepted (0, 100]."""

    select: bool = True
    """Choose between the retrained network and the one it started from on validation data (``keep_z``);
    False: always the retrained one."""

    keep_z: float = 2.0
    """The retrained network replaces the one it started from (the programmed software network) only if the
    host model of the measured map scores it significantly better on the validation split (the paired sign
    test of ``search_z`` at this z), so retraining never costs a healthy chip accuracy by chance. Accepted
    [0, 10]."""

    def _validate(self) -> None:
        super()._validate()
        self._int_range("epochs", 0, 1000)
        self._range("lr", 0.0, 10.0, lo_open=True)
        self._int_range("batch_size", 1, 65536)
        self._range("distill", 0.0, 1.0)
        self._range("temperature", 0.0, 100.0, lo_open=True)
        self._range("keep_z", 0.0, 10.0)
        if not isinstance(self.select, bool):
            raise ConfigError(f"method.select = {self.select!r}; accepted true/false")


@dataclass(frozen=True)
class NoiseConfig(RetrainConfig):
    """Chip-agnostic fault/variation injection training."""

    sigma: float = -1.0
    """Injected theta spread; -1 = estimated from the map (std of measured theta, less the test's stated
    theta error). Accepted -1 or [0, 3]."""

    fault_rate: float = -1.0
    """Injected stuck-at fault rate; -1 = the map's reported rate. Accepted -1 or [0, 1)."""

    def _validate(self) -> None:
        super()._validate()
        if self.sigma != -1.0:
            self._range("sigma", 0.0, 3.0)
        if self.fault_rate != -1.0:
            self._range("fault_rate", 0.0, 1.0, hi_open=True)


@dataclass(frozen=True)
class AftConfig(RemapConfig, RetrainConfig):
    """Accelerator-friendly training (progressive shrink-and-freeze of weights on imperfect cells; one
    freezing phase per epoch)."""

    tau: float = 1.0
    """A healthy cell is imperfect when |e^theta - 1| > tau (measured theta). Accepted [0, 1000]."""

    shrink: float = 0.5
    """A frozen weight is set to what the chip realises for shrink * w. Accepted [0, 1]."""

    remap: bool = True
    """Start from ``remap`` (else from ``program``)."""

    def _validate(self) -> None:
        super()._validate()
        self._range("tau", 0.0, 1000.0)
        self._range("shrink", 0.0, 1.0)
        if not isinstance(self.remap, bool):
            raise ConfigError(f"method.remap = {self.remap!r}; accepted true/false")


@dataclass(frozen=True)
class DynamicConfig(AftConfig):
    """Layer-by-layer dynamic adjustment (ITT-RNA part 2, reconstructed)."""

    shrink: float = 1.0
    """A frozen weight is set to what the chip realises for shrink * w (1: frozen where it is). Accepted
    [0, 1]."""

    error_ref: float = 0.05
    """Reference relative output error of a layer: a layer whose output (on the imperfect outputs of the
    layers before it) deviates by e uses threshold tau * max(1, e / error_ref), so the more error has
    accumulated, the fewer weights are frozen and the more are left to compensate. Accepted (0, 10]."""

    def _validate(self) -> None:
        super()._validate()
        self._range("error_ref", 0.0, 10.0, lo_open=True)


@dataclass(frozen=True)
class FatConfig(RemapConfig, RetrainConfig):
    """Exact fault-aware retraining through the host chip model (the best epoch on validation data is
    kept)."""

    remap: bool = False
    """Start from ``remap`` (else from ``program``)."""

    inject_test_error: bool = True
    """Inject the test's stated imperfections while retraining: theta + N(0, test.theta_noise^2) per
    cell and, with ``test.miss_rate`` > 0, the expected share of missed faults, fresh every batch."""

    horizon: float = 0.0
    """Anticipate relaxation: the deployment horizon, seconds after programming (a number, or a number with a
    unit as ``time`` takes it: ``"1d"``, ``"1y"``). With a horizon > 0 and a design whose cells relax
    (``relaxation.model`` not ``none``, ``relaxation.scale`` > 0), every retraining batch sees the healthy
    cells relaxed to that age by a fresh draw of the design's relaxation model (the datasheet a host knows;
    never the chip's own draws), and the best epoch and the choice of the retrained network over the start
    are scored at that age on one fixed sampled draw. 0: the
    chip as programmed (earlier versions). Accepted [0, 10 years]; with ``wan2022`` at most its fit's 2 days
    unless ``relaxation.extrapolate``."""

    _added: ClassVar[dict[str, object]] = {**ProgramConfig._added, "horizon": 0.0}

    def _validate(self) -> None:
        super()._validate()
        for name in ("remap", "inject_test_error"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"method.{name} = {getattr(self, name)!r}; accepted true/false")
        object.__setattr__(self, "horizon", parse_time(self.horizon, "method.horizon"))


@dataclass(frozen=True)
class RemapFatConfig(FatConfig):
    """``remap`` then ``fat``."""

    remap: bool = True
    """Start from ``remap`` (else from ``program``)."""



@dataclass(frozen=True)
class ChipLoopConfig(RetrainConfig):
    """Chip-in-the-loop retraining (``ondevice``)."""

    epochs: int = 1
    """Passes over the training split, each step one on-device iteration. Accepted [0, 1000]."""

    lr: float = 1e-3
    """Adam peak learning rate, cosine-decayed. Accepted (0, 10]."""

    eval_every: int = 100
    """Steps between validation measurements on the chip (for the accuracy-versus-writes record and the
    writes needed to reach the best accuracy). Accepted [1, 1000000]."""

    eval_images: int = 1000
    """Validation images per measurement. Accepted [10, 1000000]."""

    write_budget: int | None = None
    """On-device writes allowed after the first programming (None: unlimited); the loop stops writing
    when the next step's writes would exceed it. Accepted None or [0, 1e15]."""

    program: ProgramConfig = field(default_factory=ProgramConfig)
    """The ``program`` run that gives the first deployment (defect-aware pair rule, scale search)."""

    _nested: ClassVar[dict[str, type[MethodConfig] | None]] = {"program": ProgramConfig}

    def _validate(self) -> None:
        super()._validate()
        self._check_nested()
        self._int_range("eval_every", 1, 1_000_000)
        self._int_range("eval_images", 10, 1_000_000)
        self._int_range("write_budget", 0, 10**15, optional=True)


@dataclass(frozen=True)
class ThresholdConfig(ChipLoopConfig):
    """Threshold training (Xia et al., DAC 2017)."""

    threshold: float = 0.02
    """A weight is written when its accumulated update exceeds this fraction of the layer's weight scale.
    Accepted [0, 1]."""

    def _validate(self) -> None:
        super()._validate()
        self._range("threshold", 0.0, 1.0)


@dataclass(frozen=True)
class CodesignConfig(MethodConfig):
    """ITT-RNA part 3 (reconstructed): off-device result, zero-write calibration, K budgeted iterations."""

    base: MethodConfig | None = None
    """The off-device start, a registered method's config: ``aft``, ``dynamic`` or ``remap-fat`` (in TOML a
    table ``{method = "dynamic", epochs = 2}`` or just the name). None (``auto``): ``dynamic`` with its
    defaults for networks without convolutions (ITT-RNA's dynamic adjustment for MLPs), else ``remap-fat``
    (version 4; version 3 used ``aft``, which on development chips 1 and 2 of the hard chip, validation
    images, lost 0.36/0.40 pp on MNIST and 2.04/1.72 pp on Fashion-MNIST against 0.12/0.40 and 0.64/1.24 with
    ``remap-fat``)."""

    iterations: int = 5
    """On-device iterations (programming rounds) at most. Accepted [0, 10]."""

    write_budget: int = 20000
    """On-device writes allowed in total after the first programming. Accepted [0, 1e15]."""

    calib_images: int = 1024
    """Training images run through the chip for the gain/offset fit and each estimate. Accepted [16, 1e6]."""

    ridge: float = 1e-3
    """Ridge weight (relative to the mean input power) pulling each estimate toward the host model's
    prediction, for inputs the data never excites. Accepted (0, 1e3]."""

    max_corrections: int = 2
    """Corrections of one weight before it is taken as unfixable (a cell the test missed). Accepted [1, 10]."""

    digital_epochs: int = 1
    """Epochs retraining the digital parameters against the estimated chip (0: skip). Accepted [0, 100]."""

    digital_lr: float = 1e-3
    """Adam peak learning rate of that digital retraining. Accepted (0, 10]."""

    batch_size: int = 64
    """Mini-batch size of that digital retraining. Accepted [1, 65536]."""

    BASES: ClassVar[tuple[type[MethodConfig], ...]] = ()  # filled below: AftConfig, DynamicConfig, RemapFatConfig
    _nested: ClassVar[dict[str, type[MethodConfig] | None]] = {"base": None}

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        if self.base is not None and type(self.base) not in self.BASES:
            raise ConfigError(f"method.base = {type(self.base).__name__}; accepted the config of aft, dynamic or "
                              "remap-fat, or none (auto)")
        self._int_range("iterations", 0, 10)
        self._int_range("write_budget", 0, 10**15)
        self._int_range("calib_images", 16, 1_000_000)
        self._range("ridge", 0.0, 1e3, lo_open=True)
        self._int_range("max_corrections", 1, 10)
        self._int_range("digital_epochs", 0, 100)
        self._range("digital_lr", 0.0, 10.0, lo_open=True)
        self._int_range("batch_size", 1, 65536)

    def base_for(self, has_convolutions: bool) -> MethodConfig:
        """The base config to run: ``base``, or the ``auto`` choice with its defaults."""
        if self.base is not None:
            return self.base
        return RemapFatConfig() if has_convolutions else DynamicConfig()


CodesignConfig.BASES = (AftConfig, DynamicConfig, RemapFatConfig)


@dataclass(frozen=True)
class BnConfig(MethodConfig):
    """BatchNorm re-estimation after ``program`` (zero writes): off-device through the host model of the
    measured map (``bn``)."""

    program: ProgramConfig = field(default_factory=ProgramConfig)
    """The ``program`` run that gives the deployment whose BatchNorm statistics are re-estimated."""

    images: int = 1024
    """Training images the statistics are estimated on. Accepted [16, 1000000]."""

    batch_size: int = 256
    """Images per pass. Accepted [1, 65536]."""

    _nested: ClassVar[dict[str, type[MethodConfig] | None]] = {"program": ProgramConfig}

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        self._check_nested()
        self._int_range("images", 16, 1_000_000)
        self._int_range("batch_size", 1, 65536)


@dataclass(frozen=True)
class BnChipConfig(BnConfig):
    """BatchNorm re-estimation after ``program`` from the chip's own forward passes (``bn-chip``, zero
    writes): each normalisation layer's input is read on the chip, layer by layer along the data flow."""
