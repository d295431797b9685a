"""The OpenAPI 3 description of cubby's HTTP API, served at /openapi.json.

Written by hand from the routes (they are few and stable), so that it states exactly what the
server checks: schemathesis fuzzes the server from this document.
"""

from __future__ import annotations

from typing import Any

from cubby import __version__

HASH = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
PATH = {"type": "string", "pattern": "^[^\\u0000-\\u001f\\u007f\\\\]*$", "maxLength": 2900}
"""A path in the caller's tree: no control characters or backslashes, at most 2,900 bytes.
(Other rules, such as no ``..`` and 255 bytes a name, are answered 400 ``invalid_path``.)"""
ID = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
REV = {"type": ["integer", "null"], "minimum": 0, "maximum": 2**63 - 1}
CURSOR = {"type": "string", "pattern": "^[A-Za-z0-9_-]*={0,2}$"}
ANY_PATH = {"type": "string", "description": "a path; one that breaks the path rules gets an error of its own in the results"}
"""A path in a batch: a bad one is answered in its own result, not by refusing the batch."""
WRITE_ERRORS = (409, 413, 415, 507)
"""What any route with a JSON body may answer besides 400, 401 and 404: a conflict, a body
over the route's cap, a wrong content type, the server's disk full."""
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
COMMIT_PROPERTIES: dict[str, Any] = {
    "path": PATH,
    "size": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
    "chunks": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["hash", "size"],
            "properties": {"hash": HASH, "size": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}},
        },
    },
    "expected_rev": REV,
    "mtime": {"type": ["number", "null"], "minimum": -1e13, "maximum": 1e13},
}
COMMIT = {"type": "object", "required": ["path", "size", "chunks"], "properties": COMMIT_PROPERTIES}
BATCH_COMMIT = {**COMMIT, "properties": {**COMMIT_PROPERTIES, "path": ANY_PATH}}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(c): {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        for c in codes
    }


def _json_op(
    summary: str, body: dict[str, Any] | None, ok: dict[str, Any], *errs: int, params: list[Any] | None = None,
    status: int = 200,
) -> dict[str, Any]:
    if body is not None:
        errs = (*errs, *WRITE_ERRORS)
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            str(status): {"description": "ok", "content": {"application/json": {"schema": ok}}},
            **_errors(400, 401, 404, *sorted(set(errs))),
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


def _q(name: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema}


def document() -> dict[str, Any]:
    path_props: dict[str, Any] = {"path": PATH, "expected_rev": REV}
    entry_ok = {"type": "object", "properties": {"entry": ENTRY}}
    delete_body = {"type": "object", "required": ["path"], "properties": {**path_props, "unchanged_since": REV}}
    paths: dict[str, Any] = {
        "/api/v1/account": {"get": _json_op("The caller's account and namespaces (each writable one with this hour's proof_key: {window, key, valid_for}, to compute possession nonces)", None, {"type": "object"})},
        "/api/v1/files/commit": {"post": _json_op("Commit a file (answers need_chunks until its chunks are held)", COMMIT, {"type": "object"}, 409, 413, 415)},
        "/api/v1/files/commit_batch": {
            "post": _json_op(
                "Commit many files in one transaction",
                {"type": "object", "required": ["commits"], "properties": {"commits": {"type": "array", "items": BATCH_COMMIT, "minItems": 1, "maxItems": 1000}}},
                {"type": "object"},
                413,
                415,
            )
        },
        "/api/v1/files/mkdir": {
            "post": _json_op(
                "Create a folder and its parents", {"type": "object", "required": ["path"], "properties": {"path": PATH}}, entry_ok
            )
        },
        "/api/v1/files/delete": {"post": _json_op("Delete a file or folder", delete_body, entry_ok, 409, 415)},
        "/api/v1/files/move": {
            "post": _json_op(
                "Move or rename (metadata only)",
                {"type": "object", "required": ["from_path", "to_path"], "properties": {"from_path": PATH, "to_path": PATH, "expected_rev": REV}},
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
                {"type": "object", "required": ["path", "rev"], "properties": {"path": PATH, "rev": ID}},
                entry_ok,
                409,
                415,
            )
        },
        "/api/v1/files/stat": {"get": _json_op("One entry", None, entry_ok, 409, params=[_q("path", PATH)])},
        "/api/v1/files/list": {
            "get": _json_op(
                "Children of a folder, or its subtree, paged",
                None,
                {"type": "object"},
                409,
                params=[_q("path", PATH), _q("recursive", {"type": "boolean"}), _q("cursor", CURSOR), _q("limit", {"type": "integer", "minimum": 1, "maximum": 10000})],
            )
        },
        "/api/v1/files/history": {"get": _json_op("Revisions of a file", None, {"type": "object"}, 409, params=[_q("path", PATH, True), _q("limit", {"type": "integer", "minimum": 1, "maximum": 10000})])},
        "/api/v1/files/blocklist": {
            "get": _json_op(
                "The chunks of a file (current or given revision)",
                None,
                {"type": "object"},
                409,
                params=[_q("path", PATH, True), _q("rev", {"type": "integer", "minimum": 0, "maximum": 2**63 - 1})],
            )
        },
        "/api/v1/files/blocklists": {
            "post": _json_op(
                "The chunks of many files",
                {"type": "object", "required": ["paths"], "properties": {"paths": {"type": "array", "items": ANY_PATH, "minItems": 1, "maxItems": 1000}}},
                {"type": "object"},
                415,
            )
        },
        "/api/v1/journal": {
            "get": _json_op(
                "Changes of a namespace after a journal id",
                None,
                {"type": "object"},
                params=[_q("ns_id", ID), _q("after", {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}), _q("limit", {"type": "integer", "minimum": 1, "maximum": 10000})],
            )
        },
        "/api/v1/tokens": {
            "get": _json_op("The caller's tokens", None, {"type": "object"}),
            "post": _json_op(
                "Create a token", {"type": "object", "properties": {"label": {"type": ["string", "null"], "maxLength": 200}}},
                {"type": "object"}, status=201,
            ),
        },
        "/api/v1/tokens/{token_id}": {
            "delete": {
                "summary": "Revoke one of the caller's tokens",
                "parameters": [{"name": "token_id", "in": "path", "required": True, "schema": ID}],
                "responses": {"204": {"description": "revoked"}, **_errors(400, 401, 404)},
            }
        },
        "/api/v1/blocks/prove": {
            "post": _json_op(
                "Prove possession of chunks: with alg blake3, the keyed BLAKE3 of the bytes under "
                "blake3_derive_key(context, nonce) (cubby.core.proofs); without alg, sha256(nonce || bytes); "
                "with each chunk's size as the commit stated it "
                "and, optionally, the hour (window) the commit answer named with the nonce",
                {"type": "object", "required": ["ns_id", "proofs"], "properties": {
                    "ns_id": ID,
                    "alg": {"type": "string", "enum": ["blake3", "sha256"]},
                    "proofs": {"type": "object", "maxProperties": 4096, "additionalProperties": {
                        "type": "object", "required": ["size", "proof"], "additionalProperties": False,
                        "properties": {
                            "size": {"type": "integer", "minimum": 1, "maximum": 16 * 1024 * 1024},
                            "proof": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                            "window": {"type": "integer", "minimum": 0, "maximum": 2**40 - 1},
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
                "responses": {"200": {"description": "chunk frames", "content": {"application/x-cubby-chunks": {"schema": {"type": "string", "format": "binary"}}}}, **_errors(400, 401, 404, 413, 415)},
            }
        },
        "/api/v1/blocks/locate": {
            "post": {
                "summary": "Signed reads of the chunks from the bucket (downloads=direct), and those to fetch instead",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["hashes"], "properties": {"hashes": {"type": "array", "items": HASH, "minItems": 1, "maxItems": 4096}}}}}},
                "responses": {"200": {"description": "the plan", "content": {"application/json": {"schema": {"type": "object", "required": ["direct"], "properties": {
                    "direct": {"type": "boolean"},
                    "reads": {"type": "array", "items": {"type": "object", "properties": {
                        "url": {"type": "string"}, "headers": {"type": "object"},
                        "chunks": {"type": "array", "items": {"type": "array", "prefixItems": [HASH, {"type": "integer"}, {"type": "integer"}]}},
                    }}},
                    "fetch": {"type": "array", "items": HASH},
                }}}}}, **_errors(400, 401, 404, 415)},
            }
        },
        "/api/v1/blocks/put_plan": {
            "post": _json_op(
                "A pack for the caller to put in the bucket itself (uploads=direct): its pieces (the server's "
                "bytes, or a chunk by name), the PUT's URL, headers and one chunk signature per piece and the "
                "last; or {direct: false}, and the chunks go through /blocks/upload",
                {"type": "object", "required": ["ns_id", "chunks"], "properties": {
                    "ns_id": ID,
                    "chunks": {"type": "array", "minItems": 1, "maxItems": 8192, "items": {
                        "type": "array", "prefixItems": [HASH, {"type": "integer", "minimum": 8192, "maximum": 4 * 1024 * 1024}],
                        "minItems": 2, "maxItems": 2,
                    }},
                }},
                {"type": "object", "required": ["direct"], "properties": {"direct": {"type": "boolean"}}},
                403,
            )
        },
        "/api/v1/blocks/put_done": {
            "post": _json_op(
                "The pack of a put_plan answer is in the bucket: index its chunks (409 pack_not_stored if the "
                "bucket does not hold it; 403 bad_ticket unless the ticket is that plan's, for the caller)",
                {"type": "object", "required": ["ns_id", "pack", "chunks", "expires", "ticket"], "properties": {
                    "ns_id": ID,
                    "pack": {"type": "string", "pattern": "^[0-9a-f]{34}$"},
                    "chunks": {"type": "array", "minItems": 1, "maxItems": 8192, "items": {
                        "type": "array", "prefixItems": [HASH, {"type": "integer", "minimum": 8192, "maximum": 4 * 1024 * 1024}],
                        "minItems": 2, "maxItems": 2,
                    }},
                    "expires": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                    "ticket": {"type": "string"},
                }},
                {"type": "object", "properties": {"received": {"type": "integer"}, "stored": {"type": "integer"}}},
                403, 409,
            )
        },
        "/api/v1/blocks/upload": {
            "post": {
                "summary": "Upload chunks as frames (32-byte SHA-256, 4-byte length, bytes)",
                "parameters": [_q("ns_id", ID)],
                "requestBody": {"required": True, "content": {"application/x-cubby-chunks": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": {"200": {"description": "stored", "content": {"application/json": {"schema": {"type": "object"}}}}, **_errors(400, 401, 404, 413, 415, 507)},
            }
        },
        "/api/v1/blocks/{hash}": {
            "get": {
                "summary": "One chunk",
                "parameters": [{"name": "hash", "in": "path", "required": True, "schema": HASH}],
                "responses": {"200": {"description": "bytes", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}, **_errors(400, 401, 404)},
            }
        },
        "/api/v1/content/{path}": {
            "get": {
                "summary": "A whole file, streamed; honours Range",
                "parameters": [
                    {"name": "path", "in": "path", "required": True, "schema": PATH},
                    _q("rev", {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}),
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
