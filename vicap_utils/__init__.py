"""vicap: fine-tune BLIP vision-language models with LoRA to caption photos in Vietnamese."""
import logging

__version__ = "0.1.0"

# peft imports bitsandbytes, whose CPU backend warns at import, on CPUs with AVX512-BF16, that its
# 4-bit kernel could not be fetched from a hub: vicap uses 8-bit only, and the line would break
# every one-line error.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
