"""Load and latency harnesses that measure the product against a baseline in one run."""
