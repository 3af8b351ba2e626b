"""A Qwen3-VL checkpoint, one concern per module:

- ``architecture``: config.json / ``model.config`` values, checked; transformers config; meta model
- ``checkpoint``: which checkpoint a job uses, checked before anything loads (``resolve``)
- ``random_init``: ``model.init=random``'s weightless directory (described, then written) and model
- ``digest``: what identifies a checkpoint (header fingerprint, weights' bytes)
- ``placement``: device, dtype, device_map / max_memory
- ``loader``: the model and tokenizer, offline, eval mode
- ``scope``: which weights a search covers; bit targets over them vs ModelOpt's

Import the module that holds a name (``from .model import scope``).
"""
