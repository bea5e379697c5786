"""The OpenAPI 3 description of the JSON API, served at ``/api/openapi.json``.

Kept as data beside the routes; tests check that every ``/api`` route is described here.
"""
from __future__ import annotations

from dinoret import __version__
from dinoret.core.units import human_size

_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_JSON = "application/json"


def _ok(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


_IMAGE_ID = {"name": "image_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}

_SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error", "status"],
        "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
    },
    "Links": {
        "type": "object",
        "properties": {k: {"type": "string"} for k in ("self", "file", "thumbnail", "page")},
    },
    "Hit": {
        "type": "object",
        "required": ["rank", "id", "path", "score"],
        "properties": {
            "rank": {"type": "integer", "description": "1-based"},
            "id": {"type": "integer"},
            "path": {"type": "string"},
            "score": {"type": "number", "description": "cosine similarity of the DINOv2 embeddings"},
            "links": _ref("Links"),
        },
    },
    "SearchResult": {
        "type": "object",
        "properties": {
            "query": {
                "type": "object",
                "description": "{'id': n} for a search by indexed id, {'upload': {'width', 'height'}} for an upload",
            },
            "k": {"type": "integer"},
            "results": {"type": "array", "items": _ref("Hit")},
        },
    },
    "Image": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "path": {"type": "string"},
            "size": {"type": "integer", "description": "bytes"},
            "mtime": {"type": "number"},
            "content_hash": {"type": "string"},
            "pixel_hash": {"type": ["string", "null"]},
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "shard": {"type": "integer"},
            "links": _ref("Links"),
        },
    },
    "Stats": {
        "type": "object",
        "properties": {
            "model": {"type": "string"},
            "dim": {"type": "integer"},
            "images": {"type": "integer"},
            "shards": {"type": "integer"},
            "not_in_shards": {"type": "integer",
                              "description": "images committed after the shards were last built (searched exactly)"},
            "index_type": {"type": "string"},
            "index_params": {"type": "object"},
            "disk_bytes": {"type": "integer"},
            "last_run": {"type": ["object", "null"],
                         "description": "the latest index run; status running, done or interrupted (killed)"},
            "skipped": {"type": "integer", "description": "files that could not be indexed"},
        },
    },
    "ReportSummary": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "created": {"type": "string", "format": "date-time"},
            "threshold": {"type": ["number", "null"]},
            "against": {"type": ["string", "null"]},
            "n_groups": {"type": "integer"},
            "n_images": {"type": "integer"},
            "files": {"type": "array", "items": {"type": "string"}},
            "params": {"type": "object"},
        },
    },
    "Report": {
        "allOf": [
            _ref("ReportSummary"),
            {
                "type": "object",
                "properties": {
                    "stats": {"type": "object"},
                    "groups": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "group": {"type": "integer"},
                                "keeper": {"type": ["integer", "null"]},
                                "reviewed": {"type": ["string", "null"], "enum": ["not_duplicates", None]},
                                "members": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "id": {"type": ["integer", "null"]},
                                            "path": {"type": "string"},
                                            "is_keeper": {"type": "boolean"},
                                            "score": {"type": "number"},
                                            "reason": {"type": "string", "enum": ["exact", "near"]},
                                            "width": {"type": "integer"},
                                            "height": {"type": "integer"},
                                            "size": {"type": "integer"},
                                            "external": {"type": "boolean"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        ]
    },
}


def openapi_document(config: dict) -> dict:
    """The document for an app with this config (limits and sizes are the configured ones)."""
    sizes = list(config["THUMB_SIZES"])
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dinoret",
            "version": __version__,
            "description": (
                "Search an image index built by `dinoret index` and read its dedup reports. "
                "Files are served only by index id. With `dinoret serve --token`, every request "
                "needs `Authorization: Bearer <token>`."
            ),
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}] if not config.get("API_TOKEN") else [{"bearer": []}],
        "paths": {
            "/api/search": {
                "post": {
                    "summary": "The k indexed images most like an uploaded image or an indexed one",
                    "description": (
                        f"Uploads are limited to {human_size(config['MAX_CONTENT_LENGTH'])} and {config['MAX_UPLOAD_PIXELS']:,} pixels. "
                        "A search by id leaves the query image itself out of the results."
                    ),
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "image": {"type": "string", "format": "binary"},
                                        "id": {"type": "integer"},
                                        "k": {"type": "integer", "minimum": 1, "maximum": config["K_MAX"],
                                              "default": config["K_DEFAULT"]},
                                    },
                                }
                            },
                            _JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["id"],
                                    "properties": {"id": {"type": "integer"}, "k": {"type": "integer"}},
                                }
                            },
                        },
                    },
                    "responses": {
                        "200": _ok(_ref("SearchResult")),
                        "400": _ERROR, "401": _ERROR, "404": _ERROR, "413": _ERROR,
                    },
                }
            },
            "/api/images/{image_id}": {
                "get": {
                    "summary": "An indexed image's record",
                    "parameters": [_IMAGE_ID],
                    "responses": {"200": _ok(_ref("Image")), "401": _ERROR, "404": _ERROR},
                }
            },
            "/api/images/{image_id}/thumbnail": {
                "get": {
                    "summary": "A JPEG thumbnail (made on first request, then cached)",
                    "parameters": [
                        _IMAGE_ID,
                        {"name": "size", "in": "query", "schema": {"type": "integer", "enum": sizes, "default": sizes[1]}},
                    ],
                    "responses": {
                        "200": {"description": "JPEG", "content": {"image/jpeg": {}}},
                        "400": _ERROR, "401": _ERROR, "404": _ERROR,
                    },
                }
            },
            "/api/images/{image_id}/file": {
                "get": {
                    "summary": "The indexed file itself",
                    "parameters": [_IMAGE_ID],
                    "responses": {
                        "200": {"description": "the file, with its image type", "content": {"image/*": {}}},
                        "401": _ERROR, "404": _ERROR,
                    },
                }
            },
            "/api/stats": {
                "get": {"summary": "The index at a glance", "responses": {"200": _ok(_ref("Stats")), "401": _ERROR}}
            },
            "/api/dedup/reports": {
                "get": {
                    "summary": "Stored dedup reports, newest first",
                    "responses": {
                        "200": _ok({"type": "object", "properties": {
                            "reports": {"type": "array", "items": _ref("ReportSummary")}}}),
                        "401": _ERROR,
                    },
                }
            },
            "/api/dedup/reports/{report_id}": {
                "get": {
                    "summary": "One dedup report, with reviewers' verdicts and keepers applied",
                    "parameters": [{"name": "report_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                    "responses": {"200": _ok(_ref("Report")), "401": _ERROR, "404": _ERROR},
                }
            },
            "/api/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1 document"}}}
            },
        },
    }
