"""The model's text side that masters and nodes share.

The tokenizer wrapper, chat templates, and the small model directory the simulated engine serves.
"""
