"""Evaluation of the watermark schemes: the prompts, batched generation and the quality metrics."""
