"""Export trained drafts: a Hugging Face-style directory, or vLLM speculators' field layout."""

from dspark_core.export.formats import export_draft, load_export

__all__ = ["export_draft", "load_export"]
