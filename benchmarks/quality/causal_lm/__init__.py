"""The causal-LM regime of the quality benchmark: SmolLM2-135M-Instruct fine-tuned on four
generative tasks, merged with every method through plain ``mergekit-yaml``
(``python -m benchmarks.quality.causal_lm.run``; see ``docs/quality.md``)."""
