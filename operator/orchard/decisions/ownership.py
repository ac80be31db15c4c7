"""Whose is a child found by name: pure.

A name is no proof: an object of the same name may be left by an earlier owner of the
same name (deleted, its children not yet collected), or be someone else's altogether.
Orchard claims a child by its owner's uid.

=========  ==============================================================  ============
verdict    the object found                                                 what to do
=========  ==============================================================  ============
absent     none                                                             create it
ours       names the owner's uid in its ownerReferences                     use it
stale      owned by an earlier object of the owner's kind and name         replace it
foreign    anything else                                                    refuse: conflict
=========  ==============================================================  ============
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from orchard.api.common import API_VERSION

Ownership = Literal["absent", "ours", "stale", "foreign"]


def ownership(obj: Mapping[str, Any] | None, kind: str, name: str, uid: str | None) -> Ownership:
    """The verdict on `obj`, found by name, for an owner of `kind`, `name` and `uid`."""
    if obj is None:
        return "absent"
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    if uid is not None and any(ref.get("uid") == uid for ref in refs):
        return "ours"
    earlier = [
        ref
        for ref in refs
        if ref.get("controller")
        and ref.get("apiVersion", "").split("/")[0] == API_VERSION.split("/")[0]
        and (ref.get("kind"), ref.get("name")) == (kind, name)
    ]
    return "stale" if earlier and len(earlier) == len(refs) else "foreign"
