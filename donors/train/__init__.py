"""Fine-tune one source with LoRA (lora.py), with the loss (loss.py) and frozen norms (rms_norm.py) that make it cheap."""
