"""Embedding search: shared parts of ``python -m toolkit.embed``, ``toolkit.index``, ``toolkit.search`` and
``toolkit.umap``.

* :mod:`.store`: the embedding folder (vector chunks + Parquet metadata, resumable writes) and its reader;
* :mod:`.sources`: camera images of multi-sensor shards or a nuScenes dataroot, in a fixed order, and back;
* :mod:`.encoder`: a TorchScript image encoder with its preprocessing and pooling;
* :mod:`.faiss_index`: building, saving and loading Faiss indexes (flat, HNSW, IVF-PQ) with their limits;
* :mod:`.sheet`: contact sheets of a query and its neighbours;
* :mod:`.cli`: one-line errors and exit code 2, as :mod:`toolkit.cli`.
"""
