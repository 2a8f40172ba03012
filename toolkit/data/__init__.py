"""WebDataset input pipelines, the one way training and evaluation read data (:mod:`toolkit.data.pipeline`)."""
