"""Mid-stream recovery, sans-IO parts.

When a committed stream breaks after the client has seen part of the answer, the
proxy finishes the answer on another model (see `hydrallm.proxy.recovery` for the IO).
The pure pieces live here:

- `frames`: cut SSE bytes into whole events and parse them (no partial event is
  ever needed by the client, so holding the tail of one is free).
- `transcript`: what the client has received so far, per content block.
- `prefill`: the continuation request body (an assistant prefill) per API.
- `splice`: re-numbers the continuation stream into the client's stream, after
  checking that it reproduces what the client already has.
"""

from hydrallm.formats.frames import Event, EventSplitter, parse_event
from hydrallm.formats.prefill import names_prefill, prefill_body
from hydrallm.formats.splice import Mismatch, Splicer, UpstreamFailed, make_splicer
from hydrallm.formats.transcript import Block, Transcript

__all__ = [
    "Block",
    "Event",
    "EventSplitter",
    "Mismatch",
    "Splicer",
    "Transcript",
    "UpstreamFailed",
    "make_splicer",
    "names_prefill",
    "parse_event",
    "prefill_body",
]
