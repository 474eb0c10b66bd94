"""Training objectives: the interface (base.py), one module per objective (sft.py, dpo.py), their loss
modules (losses.py) and the registry that picks one for a run (registry.py)."""
