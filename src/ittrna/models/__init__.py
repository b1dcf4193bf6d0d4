"""Models: the registry, the zoo and checkpoints.

- :mod:`.registry`: :class:`ModelSpec`, :data:`MODELS`, :func:`register_model`, :func:`build`.
- :mod:`.zoo`: the built-in networks (``mlp``, ``mlp-deep``, ``lenet5``, ``vgg-small``).
- :mod:`.checkpoint`: pickle-free checkpoints and their field-by-field checks.

Parameters are initialised from an explicit ``torch.Generator``; nothing draws from global random state.
"""

from __future__ import annotations

from ittrna.models import zoo as _zoo  # noqa: F401  (registers the built-in networks)
from ittrna.models.checkpoint import (
    CHECKPOINT_FORMAT,
    check_checkpoint,
    check_state_fits,
    load_checkpoint,
    load_checkpoint_payload,
    model_ref,
    save_checkpoint,
)
from ittrna.models.definitions import Definition, is_definition, parse_definition, trust_definition
from ittrna.models.registry import MAX_CLASSES, MAX_IN_SIDE, MODELS, ModelSpec, as_definition, build, register_model

__all__ = ["CHECKPOINT_FORMAT", "MAX_CLASSES", "MAX_IN_SIDE", "MODELS", "Definition", "ModelSpec", "as_definition",
           "build", "check_checkpoint", "check_state_fits", "is_definition", "load_checkpoint",
           "load_checkpoint_payload", "model_ref", "parse_definition", "register_model", "save_checkpoint",
           "trust_definition"]
