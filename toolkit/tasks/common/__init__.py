"""Pieces shared by two or more task families (a piece used by one family lives in that family's folder).

* ``classification.py``: :class:`ClassifierTask` (cross-entropy, accuracy, confusion matrix);
* ``frozen.py``: :class:`Frozen`, a submodule that never trains;
* ``figures.py``: matplotlib figures as TensorBoard images (confusion matrix);
* ``retrieval.py``: recall@k of paired embeddings over a whole set (Faiss-free, chunked).
"""
