"""The FHE runtime: model families compiled, keys, codecs, and the worker processes that run
circuit calls (a crash of Concrete's runtime costs a worker, never the caller)."""
