"""datarepo: a versioned repository of datums stored in WebDataset shards."""

__version__ = "0.1.0"
