"""Tolerance methods behind one registry (:data:`METHODS`) and one signature.

An off-device method sees what a real host sees — the software model, the training and validation splits,
the chip's :class:`~ittrna.host.MeasuredMap`, its config and a seed — and returns a
:class:`~ittrna.host.Deployment`. This package never imports :mod:`ittrna.chip` or :mod:`ittrna.nn`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ittrna.boundary import host_side
from ittrna.errors import InputError
from ittrna.host import ChipAccess, Deployment, MeasuredMap
from ittrna.methods import normalize as _normalize  # noqa: F401  (registers bn and bn-chip)
from ittrna.methods import offdevice as _offdevice  # noqa: F401  (registers the off-device methods)
from ittrna.methods import ondevice as _ondevice  # noqa: F401  (registers the on-device methods)
from ittrna.methods.base import BY_CONFIG, METHODS, Context, MethodConfig, MethodSpec, get_method, spec_for

__all__ = ["BY_CONFIG", "METHODS", "Context", "MethodConfig", "MethodSpec", "apply_method", "get_method"]


def apply_method(
    name: str | MethodConfig,
    model: nn.Module,
    measured: MeasuredMap,
    ctx: Context,
    settings: Mapping[str, Any] | MethodConfig | None = None,
    session: ChipAccess | None = None,
) -> Deployment:
    """Run method ``name`` on ``model`` for the chip described by ``measured``.

    Args:
        name: a key of :data:`METHODS`, or a method's config (which names its method, :data:`BY_CONFIG`).
        model: the software model (not modified).
        measured: the chip's measured map (all a method knows of the chip).
        ctx: training/validation splits, seed, device.
        settings: a config of the method's class, or field overrides for its defaults.
        session: the chip-in-the-loop session an ``on-device`` method needs (ignored by off-device ones).

    Returns:
        The deployment; its ``report`` also carries ``method``, ``version`` and the settings used.
    """
    if isinstance(name, MethodConfig):
        if settings is not None:
            raise InputError("give a method's config or its name and settings, not both")
        spec, settings = spec_for(name), name
        name = spec.name
    spec = get_method(name)
    cfg = settings if isinstance(settings, MethodConfig) else spec.make_config(settings)
    if not isinstance(cfg, spec.config):
        raise TypeError(f"settings for {name!r} must be a {spec.config.__name__}, got {type(cfg).__name__}")
    view = measured.for_method()
    if spec.kind == "on-device":
        if session is None:
            raise InputError(f"method {name!r} works on the chip: it needs a chip-in-the-loop session")
        with host_side():  # the true chip out of reach but through the session (ittrna.boundary)
            deployment = spec.fn(model, view, cfg, ctx, session)
    else:
        with host_side():
            deployment = spec.fn(model, view, cfg, ctx)
    deployment.report.update(method=name, version=spec.version, settings=cfg.to_dict())
    return deployment
