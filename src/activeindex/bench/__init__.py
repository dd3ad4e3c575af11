"""The robustness benchmark: real-photo corpus, named edits, metrics, the passive-vs-active runner and
its report. The method modules (extractor, codec, activation, ...) never import this package."""
