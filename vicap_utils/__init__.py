"""vicap: fine-tune BLIP vision-language models with LoRA to caption photos in Vietnamese."""
import logging

__version__ = "0.1.0"

# bitsandbytes' CPU backend warns at import (AVX512-BF16 CPUs) that its 4-bit kernel is not on
# the hub: vicap uses 8-bit only, and the warning would break every one-line error.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
