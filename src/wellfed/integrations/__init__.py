"""Adapters for training frameworks that rebuild DataLoaders (imported on demand).

``wellfed.integrations.accelerate``: hand a seeded loader to Hugging Face Accelerate without
losing per-sample seeding or the world-size-invariant shards. Lightning needs no adapter: it
keeps a seeded loader's ``WorldInvariantSampler`` (a ``DistributedSampler``) and, when it
does rebuild a loader, ``SeededDataLoader`` hands it the call as made, seed included.
"""
