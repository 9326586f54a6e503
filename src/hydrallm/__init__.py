"""hydrallm: an LLM API proxy with automatic retry, model fallback and stream-aware failover."""

__version__ = "0.1.0"
# Filled in by release builds; "unknown" in a source checkout.
__commit__ = "unknown"
__build_date__ = "unknown"

__all__ = ["__build_date__", "__commit__", "__version__"]
