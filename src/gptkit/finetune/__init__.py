"""Adapting a trained GPT: supervised fine-tuning, LoRA, freezing, classification heads,
distillation, augmentation and generation-task metrics."""
