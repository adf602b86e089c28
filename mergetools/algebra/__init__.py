"""Adapter algebra: combine, rescale, resize and extract LoRA adapters."""
