"""The shared LoRA training engine behind every model's train.sh."""
