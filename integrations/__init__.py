"""Bridges to the outside: TensorBoard, torch.distributed, torch LR schedulers, sweep engines."""
