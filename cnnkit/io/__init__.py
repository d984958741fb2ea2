"""Weights and checkpoints: PyTorch (read without torch), safetensors and npz files.

* ``load_state_dict(path)`` -> ``OrderedDict`` of name -> NumPy array from ``.pt``/``.pth``/
  ``.bin``/``.ckpt`` (``torch.save`` files, read by a restricted unpickler that never runs code),
  ``.safetensors`` or ``.npz``; ``save_state_dict(state, path)`` writes the last two atomically.
* ``save(model, path, training_state=None)`` writes one checkpoint file (weights, the model's
  registry config, the cnnkit version, the training state); ``load(path)`` rebuilds the model,
  ``load_checkpoint(path)`` returns model, training state, config and metadata.
* ``load_torch(path)`` returns whatever a ``torch.save`` file holds, tensors as NumPy arrays.
"""
from .checkpoint import Checkpoint, load, load_checkpoint, save
from .state_dict import load_state_dict, read_metadata, save_state_dict
from .torch_pickle import RefusedGlobalError, load_torch

__all__ = [
    "load_state_dict", "save_state_dict", "save", "load", "load_checkpoint", "Checkpoint",
    "load_torch", "RefusedGlobalError", "read_metadata",
]
