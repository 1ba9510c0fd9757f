"""Runnable examples; ``examples.text_stats`` is the custom job type the README shows."""
