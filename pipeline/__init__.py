"""Producing data: sources and shards (``data``), replayable views (``views``), the cache store
(``cache``) and the teacher job (``teach``). Import from those faces."""
