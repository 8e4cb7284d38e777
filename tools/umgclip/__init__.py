"""The Python tools' one CLIP: model (PyTorch CLIPModel), safetensors (numpy I/O),
tokenizer (CLIP BPE), preprocess (the C encoder's preprocessing with PIL)."""
