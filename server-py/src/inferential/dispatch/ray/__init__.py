"""The Ray Serve backend (docs/ray.md). Empty on purpose: Ray workers import
``inferential.dispatch.ray.replica`` and nothing else of it."""
