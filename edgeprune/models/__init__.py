"""Models: the zoo of built-in architectures (a timm-style registry), edgeprune's checkpoint
format (architecture as data + state_dict + input spec) and `load_model`, which takes every
kind of --model reference."""

from edgeprune.models.checkpoint import ArchRef, parameter_shapes, save_checkpoint
from edgeprune.models.loader import (
    LoadedModel,
    build_arch,
    check_model_ref,
    demo_checkpoint_path,
    load_model,
)
from edgeprune.models.registry import create_model, list_models, register_model

__all__ = ["ArchRef", "LoadedModel", "build_arch", "check_model_ref", "create_model",
           "demo_checkpoint_path",
           "list_models", "load_model", "parameter_shapes", "register_model", "save_checkpoint"]
