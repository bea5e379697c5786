"""Whether an embedder is the one a collection was embedded with (model, weights, preprocessing,
precision)."""
from __future__ import annotations

import json


def _canonical(d: dict) -> str:
    return json.dumps(d, sort_keys=True, default=list)


def identity_mismatch(recorded: dict, actual: dict) -> str | None:
    """None when ``actual`` embeds exactly like ``recorded``, else what differs, for a message."""
    if recorded.get("weights_sha256") != actual.get("weights_sha256"):
        return (f"the index was built with {recorded.get('model')} weights sha256 "
                f"{str(recorded.get('weights_sha256'))[:12]}…, these are {actual.get('model')} "
                f"sha256 {str(actual.get('weights_sha256'))[:12]}…")
    # Indexes made before --precision existed were all fp32.
    if recorded.get("precision", "fp32") != actual.get("precision", "fp32"):
        return (f"the index was built with --precision {recorded.get('precision', 'fp32')}, "
                f"this embedder runs {actual.get('precision', 'fp32')}")
    for key in ("backbone_config", "dim", "preprocess"):
        if _canonical({key: recorded.get(key)}) != _canonical({key: actual.get(key)}):
            return f"the index was built with a different {key.replace('_', ' ')}: {_canonical(recorded.get(key) or {})[:200]}"
    return None
