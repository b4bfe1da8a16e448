"""What the model families differ in, as data, low enough for every layer to read (only
`captioner.py` acts on the family; the hardware plan and vocabulary set-up read these facts)."""
QUANTIZES = frozenset({"blip2"})  # the language model loads in 8-bit when asked (OPT-2.7B)
EXTENDS_VOCABULARY = frozenset({"blip"})  # BLIP-1's WordPiece needs Vietnamese entries
# base models built on this machine (vicap_utils.toy.model), with their model_type
BUILTIN_MODELS = {"mini": "blip"}
