"""Export trained drafts: a Hugging Face-style directory, or vLLM speculators' field layout."""

from dspark_core.export.formats import FORMATS, export_draft

__all__ = ["FORMATS", "export_draft"]
