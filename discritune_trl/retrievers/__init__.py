"""Frozen text-to-image retrievers that judge captions: the `Retriever` interface and built-in implementations."""

from .base import Retriever
from .open_clip_retriever import OpenCLIPRetriever
from .transformers_retriever import TransformersCLIPRetriever


__all__ = ["OpenCLIPRetriever", "Retriever", "TransformersCLIPRetriever"]
