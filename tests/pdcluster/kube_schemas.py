"""Offline validation of the plan's Kubernetes objects.

Built-in kinds: ``kubernetes-validate`` (Kubernetes' JSON schemas ship inside the package;
nothing is fetched). The LeaderWorkerSet CRD: the project's own schema in
``schemas/leaderworkerset-x-k8s-io-v1.json``, whose pod templates refer to the same
package's Kubernetes definitions.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
from referencing import Registry, Resource

KUBERNETES_VERSION = "1.28"  # LeaderWorkerSet needs 1.26 or later
LWS_SCHEMA = Path(__file__).parent / "schemas" / "leaderworkerset-x-k8s-io-v1.json"


@functools.cache
def _lws_validator() -> jsonschema.Draft202012Validator:
    folder = f"kubernetes-json-schema/v{KUBERNETES_VERSION}.0-local-strict/_definitions.json"
    definitions = json.loads(
        importlib.resources.files("kubernetes_validate").joinpath(folder).read_text()
    )
    schema = json.loads(LWS_SCHEMA.read_text())
    registry: Registry = Resource.from_contents(definitions) @ Registry()
    registry = Resource.from_contents(schema) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(document: dict[str, Any]) -> None:
    """Raises ``jsonschema.ValidationError`` (or kubernetes-validate's) when invalid."""
    if document["apiVersion"] == "leaderworkerset.x-k8s.io/v1":
        _lws_validator().validate(document)
    else:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
