"""vicap: fine-tune BLIP vision-language models with LoRA to caption photos in Vietnamese."""

__version__ = "0.1.0"
