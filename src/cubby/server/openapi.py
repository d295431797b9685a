"""The OpenAPI 3 description of cubby's HTTP API, served at /openapi.json.

Written by hand from the routes (they are few and stable), so that it states exactly what the
server checks: schemathesis fuzzes the server from this document.
"""

from __future__ import annotations

from typing import Any

from cubby import __version__

HASH = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
ERROR = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {"type": "object"}},
}
ENTRY = {
    "type": "object",
    "properties": {
        "ns_id": {"type": "integer"},
        "node_id": {"type": "integer"},
        "parent_id": {"type": ["integer", "null"]},
        "path": {"type": "string"},
        "name": {"type": "string"},
        "kind": {"type": "string", "enum": ["file", "folder"]},
        "rev": {"type": "integer"},
        "size": {"type": "integer"},
        "content_hash": {"type": ["string", "null"]},
        "mtime": {"type": ["number", "null"]},
        "deleted": {"type": "boolean"},
    },
}
COMMIT = {
    "type": "object",
    "required": ["path", "size", "chunks"],
    "properties": {
        "path": {"type": "string"},
        "size": {"type": "integer", "minimum": 0},
        "chunks": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["hash", "size"],
                "properties": {"hash": HASH, "size": {"type": "integer", "minimum": 1}},
            },
        },
        "expected_rev": {"type": ["integer", "null"], "minimum": 0},
        "mtime": {"type": ["number", "null"]},
    },
}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(c): {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        for c in codes
    }


def _json_op(summary: str, body: dict[str, Any] | None, ok: dict[str, Any], *errs: int, params: list[Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": ok}}}, **_errors(400, 401, 404, *errs)},
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


def _q(name: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema}


def document() -> dict[str, Any]:
    path_body: dict[str, Any] = {"type": "object", "required": ["path"], "properties": {"path": {"type": "string"}, "expected_rev": {"type": ["integer", "null"], "minimum": 0}}}
    entry_ok = {"type": "object", "properties": {"entry": ENTRY}}
    delete_body = {
        "type": "object",
        "required": ["path"],
        "properties": {**path_body["properties"], "unchanged_since": {"type": ["integer", "null"], "minimum": 0}},
    }
    paths: dict[str, Any] = {
        "/api/v1/account": {"get": _json_op("The caller's account and namespaces", None, {"type": "object"})},
        "/api/v1/files/commit": {"post": _json_op("Commit a file (answers need_chunks until its chunks are held)", COMMIT, {"type": "object"}, 409, 413, 415)},
        "/api/v1/files/commit_batch": {
            "post": _json_op(
                "Commit many files in one transaction",
                {"type": "object", "required": ["commits"], "properties": {"commits": {"type": "array", "items": COMMIT, "minItems": 1, "maxItems": 1000}}},
                {"type": "object"},
                413,
                415,
            )
        },
        "/api/v1/files/mkdir": {"post": _json_op("Create a folder and its parents", path_body, entry_ok, 409, 415)},
        "/api/v1/files/delete": {"post": _json_op("Delete a file or folder", delete_body, entry_ok, 409, 415)},
        "/api/v1/files/move": {
            "post": _json_op(
                "Move or rename (metadata only)",
                {"type": "object", "required": ["from_path", "to_path"], "properties": {"from_path": {"type": "string"}, "to_path": {"type": "string"}, "expected_rev": {"type": ["integer", "null"], "minimum": 0}}},
                entry_ok,
                409,
                415,
            )
        },
        "/api/v1/files/batch": {
            "post": _json_op(
                "Folder creations, deletes and moves in order, each with its own outcome",
                {"type": "object", "required": ["ops"], "properties": {"ops": {"type": "array", "minItems": 1, "maxItems": 1000, "items": {"type": "object", "required": ["op"], "properties": {"op": {"enum": ["mkdir", "delete", "move"]}}}}}},
                {"type": "object"},
                409,
                415,
            )
        },
        "/api/v1/files/restore": {
            "post": _json_op(
                "Make an old revision current again",
                {"type": "object", "required": ["path", "rev"], "properties": {"path": {"type": "string"}, "rev": {"type": "integer", "minimum": 1}}},
                entry_ok,
                409,
                415,
            )
        },
        "/api/v1/files/stat": {"get": _json_op("One entry", None, entry_ok, 409, params=[_q("path", {"type": "string"})])},
        "/api/v1/files/list": {
            "get": _json_op(
                "Children of a folder, or its subtree, paged",
                None,
                {"type": "object"},
                409,
                params=[_q("path", {"type": "string"}), _q("recursive", {"type": "boolean"}), _q("cursor", {"type": "string"}), _q("limit", {"type": "integer", "minimum": 1, "maximum": 10000})],
            )
        },
        "/api/v1/files/history": {"get": _json_op("Revisions of a file", None, {"type": "object"}, 409, params=[_q("path", {"type": "string"}, True), _q("limit", {"type": "integer", "minimum": 1, "maximum": 10000})])},
        "/api/v1/files/blocklist": {
            "get": _json_op(
                "The chunks of a file (current or given revision)",
                None,
                {"type": "object"},
                409,
                params=[_q("path", {"type": "string"}, True), _q("rev", {"type": "integer", "minimum": 0})],
            )
        },
        "/api/v1/files/blocklists": {
            "post": _json_op(
                "The chunks of many files",
                {"type": "object", "required": ["paths"], "properties": {"paths": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1000}}},
                {"type": "object"},
                415,
            )
        },
        "/api/v1/journal": {
            "get": _json_op(
                "Changes of a namespace after a journal id",
                None,
                {"type": "object"},
                params=[_q("ns_id", {"type": "integer", "minimum": 1}), _q("after", {"type": "integer", "minimum": 0}), _q("limit", {"type": "integer", "minimum": 1, "maximum": 10000})],
            )
        },
        "/api/v1/tokens": {
            "get": _json_op("The caller's tokens", None, {"type": "object"}),
            "post": _json_op("Create a token", {"type": "object", "properties": {"label": {"type": "string", "maxLength": 200}}}, {"type": "object"}, 415),
        },
        "/api/v1/blocks/prove": {
            "post": _json_op(
                "Prove possession of chunks: sha256(nonce || bytes), with each chunk's size as the commit stated it",
                {"type": "object", "required": ["ns_id", "proofs"], "properties": {
                    "ns_id": {"type": "integer", "minimum": 1},
                    "proofs": {"type": "object", "maxProperties": 4096, "additionalProperties": {
                        "type": "object", "required": ["size", "proof"], "additionalProperties": False,
                        "properties": {
                            "size": {"type": "integer", "minimum": 1, "maximum": 16 * 1024 * 1024},
                            "proof": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                        },
                    }},
                }},
                {"type": "object"},
                415,
            )
        },
        "/api/v1/blocks/fetch": {
            "post": {
                "summary": "Download chunks as frames",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["hashes"], "properties": {"hashes": {"type": "array", "items": HASH, "minItems": 1, "maxItems": 4096}}}}}},
                "responses": {"200": {"description": "chunk frames", "content": {"application/x-cubby-chunks": {"schema": {"type": "string", "format": "binary"}}}}, **_errors(400, 401, 404, 415)},
            }
        },
        "/api/v1/blocks/upload": {
            "post": {
                "summary": "Upload chunks as frames (32-byte SHA-256, 4-byte length, bytes)",
                "parameters": [_q("ns_id", {"type": "integer", "minimum": 1})],
                "requestBody": {"required": True, "content": {"application/x-cubby-chunks": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": {"200": {"description": "stored", "content": {"application/json": {"schema": {"type": "object"}}}}, **_errors(400, 401, 404, 413, 415)},
            }
        },
        "/api/v1/blocks/{hash}": {
            "get": {
                "summary": "One chunk",
                "parameters": [{"name": "hash", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "bytes", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}, **_errors(400, 401, 404)},
            }
        },
        "/api/v1/content/{path}": {
            "get": {
                "summary": "A whole file, streamed; honours Range",
                "parameters": [
                    {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
                    _q("rev", {"type": "integer", "minimum": 0}),
                    {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {"description": "the file", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                    "206": {"description": "part of the file", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                    **_errors(400, 401, 404, 409, 416),
                },
            }
        },
    }
    from cubby.server.links import openapi_paths  # the link routes describe themselves

    paths.update(openapi_paths())
    from cubby.server.shares import openapi_paths as share_paths

    paths.update(share_paths())
    return {
        "openapi": "3.1.0",
        "info": {"title": "cubby", "version": __version__, "description": "Self-hostable file storage and sync."},
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR, "Entry": ENTRY},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
