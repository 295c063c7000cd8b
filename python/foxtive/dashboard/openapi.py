"""The OpenAPI 3.0 document of the dashboard's API (``/api/openapi.json``)."""

from __future__ import annotations

from typing import Any

from .._core import __version__

_NULL_INT = {"type": "integer", "nullable": True}
_ERROR = {"description": "an error", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(ref: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _q(name: str, schema: dict[str, Any], description: str,
       required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema,
            "description": description}


_AUTH: list[dict[str, list[str]]] = [{"bearer": []}, {}]

_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"],
              "properties": {"error": {"type": "string"}}},
    "Info": {"type": "object",
             "required": ["version", "broker", "queues", "pools", "token_required", "tasks"],
             "properties": {
                 "version": {"type": "string"},
                 "broker": {"type": "string", "nullable": True,
                            "description": "the broker URL, password redacted"},
                 "queues": {"type": "array", "items": {"type": "string"}},
                 "pools": {"type": "array", "items": {"type": "string"}},
                 "token_required": {"type": "boolean"},
                 "tasks": {"type": "boolean", "description": "task look-up available"},
                 "schedules": {"type": "boolean", "description": "schedules to show"}}},
    "Counts": {"type": "object",
               "required": ["ready", "delayed", "in_progress", "dead", "consumers"],
               "description": "null where the broker cannot tell",
               "properties": {k: _NULL_INT for k in
                              ("ready", "delayed", "in_progress", "dead", "consumers")}},
    "Sample": {"type": "object", "required": ["t", "ready", "delayed", "in_progress", "dead"],
               "properties": {"t": {"type": "number"}, "ready": _NULL_INT,
                              "delayed": _NULL_INT, "in_progress": _NULL_INT,
                              "dead": _NULL_INT}},
    "Queue": {"type": "object",
              "required": ["name", "backend", "counts", "sampled_at", "error",
                           "has_dead_letters", "history", "net_rate"],
              "properties": {
                  "name": {"type": "string"}, "backend": {"type": "string"},
                  "counts": {"$ref": "#/components/schemas/Counts"},
                  "sampled_at": {"type": "number", "nullable": True},
                  "error": {"type": "string", "nullable": True},
                  "has_dead_letters": {"type": "boolean"},
                  "history": {"type": "array", "items": {"$ref": "#/components/schemas/Sample"}},
                  "net_rate": {"type": "number", "nullable": True,
                               "description": "backlog growth, messages/s"}}},
    "Queues": {"type": "object", "required": ["queues"],
               "properties": {"queues": {"type": "array",
                                         "items": {"$ref": "#/components/schemas/Queue"}}}},
    "Pool": {"type": "object",
             "required": ["name", "state", "in_flight", "concurrency_limit", "workers",
                          "circuit_breaker", "rate_limit", "counters",
                          "completed_per_second", "health", "uptime_seconds", "history"],
             "properties": {
                 "name": {"type": "string"}, "state": {"type": "string", "nullable": True},
                 "in_flight": _NULL_INT, "concurrency_limit": _NULL_INT,
                 "workers": {"type": "array", "items": {
                     "type": "object", "required": ["id", "in_flight"],
                     "properties": {"id": {"type": "string"}, "in_flight": {"type": "integer"}}}},
                 "circuit_breaker": {"type": "string", "nullable": True},
                 "rate_limit": {"type": "object", "nullable": True, "properties": {
                     "per_second": {"type": "number", "nullable": True},
                     "burst": {"type": "number", "nullable": True},
                     "waits": {"type": "integer", "nullable": True,
                               "description": "admissions that waited for a permit"},
                     "wait_seconds": {"type": "number", "nullable": True,
                                      "description": "time they waited, in all"}}},
                 "counters": {"type": "object", "additionalProperties": _NULL_INT},
                 "completed_per_second": {"type": "number", "nullable": True},
                 "health": {"type": "string", "nullable": True},
                 "uptime_seconds": {"type": "number",
                                    "description": "since the dashboard began watching"},
                 "history": {"type": "array", "items": {
                     "type": "object", "required": ["t", "processed"],
                     "properties": {"t": {"type": "number"},
                                    "processed": {"type": "integer"}}}}}},
    "Pools": {"type": "object", "required": ["pools"],
              "properties": {"pools": {"type": "array",
                                       "items": {"$ref": "#/components/schemas/Pool"}}}},
    "DeadLetter": {"type": "object",
                   "required": ["id", "queue", "source_queue", "error_type", "error_message",
                                "failed_at", "attempts", "poison_pill", "worker_id",
                                "body_size"],
                   "properties": {
                       "id": {"type": "string"}, "queue": {"type": "string"},
                       "source_queue": {"type": "string"}, "error_type": {"type": "string"},
                       "error_message": {"type": "string"}, "failed_at": {"type": "number"},
                       "attempts": {"type": "integer"}, "poison_pill": {"type": "boolean"},
                       "worker_id": {"type": "string"}, "body_size": {"type": "integer"}}},
    "DeadLetterPage": {"type": "object",
                       "required": ["total", "offset", "limit", "truncated", "error_types",
                                    "items"],
                       "properties": {
                           "total": {"type": "integer"}, "offset": {"type": "integer"},
                           "limit": {"type": "integer"}, "truncated": {"type": "boolean"},
                           "error_types": {"type": "array", "items": {"type": "string"}},
                           "items": {"type": "array",
                                     "items": {"$ref": "#/components/schemas/DeadLetter"}}}},
    "DeadLetterDetail": {"allOf": [
        {"$ref": "#/components/schemas/DeadLetter"},
        {"type": "object", "required": ["headers", "body"], "properties": {
            "headers": {"type": "object", "additionalProperties": True},
            "body": {"type": "object",
                     "required": ["size", "truncated", "text", "json", "hex"],
                     "properties": {
                         "size": {"type": "integer"}, "truncated": {"type": "boolean"},
                         "text": {"type": "string", "nullable": True},
                         "json": {"type": "string", "nullable": True,
                                  "description": "pretty-printed"},
                         "hex": {"type": "string"}}}}}]},
    "Task": {"type": "object", "required": ["id", "status", "attempts", "result", "error"],
             "properties": {
                 "id": {"type": "string"}, "status": {"type": "string"},
                 "attempts": _NULL_INT, "result": {"nullable": True},
                 "error": {"type": "object", "nullable": True, "properties": {
                     "type": {"type": "string"}, "message": {"type": "string"}}}}},
    "Run": {"type": "object", "required": ["local", "utc"], "properties": {
        "local": {"type": "string", "description": "ISO 8601 in the schedule's time zone"},
        "utc": {"type": "string", "description": "ISO 8601 UTC"}}},
    "Schedule": {"type": "object",
                 "required": ["app", "name", "task", "queue", "cron", "every", "tz",
                              "catch_up", "next", "last_tick", "leader"],
                 "properties": {
                     "app": {"type": "string"}, "name": {"type": "string"},
                     "task": {"type": "string", "nullable": True,
                              "description": "null when read from the broker alone"},
                     "queue": {"type": "string", "nullable": True},
                     "cron": {"type": "string", "nullable": True},
                     "every": {"type": "number", "nullable": True, "description": "seconds"},
                     "tz": {"type": "string"},
                     "catch_up": {"type": "string", "nullable": True},
                     "next": {"type": "array", "items": {"$ref": "#/components/schemas/Run"}},
                     "last_tick": {"type": "string", "nullable": True,
                                   "description": "the last tick enqueued, ISO 8601 UTC"},
                     "leader": {"$ref": "#/components/schemas/Leader"}}},
    "Leader": {"type": "object", "nullable": True,
               "required": ["host", "pid", "token", "expires_in"],
               "properties": {"host": {"type": "string"}, "pid": {"type": "integer"},
                              "token": {"type": "integer"},
                              "expires_in": {"type": "number",
                                             "description": "seconds left on the lease"}}},
    "Schedules": {"type": "object", "required": ["schedules", "errors"], "properties": {
        "schedules": {"type": "array", "items": {"$ref": "#/components/schemas/Schedule"}},
        "errors": {"type": "array", "items": {"type": "string"},
                   "description": "apps whose lease or ticks could not be read"}}},
    "ReplayRequest": {"type": "object", "required": ["queue"], "properties": {
        "queue": {"type": "string"},
        "ids": {"type": "array", "nullable": True, "maxItems": 10000,
                "items": {"type": "string"},
                "description": "original message ids; null or absent: all"}}},
    "PurgeRequest": {"type": "object", "required": ["queue", "confirm"], "properties": {
        "queue": {"type": "string"},
        "confirm": {"type": "string", "description": "the queue's name again"}}},
    "Replayed": {"type": "object", "required": ["replayed"],
                 "properties": {"replayed": {"type": "integer"}}},
    "Purged": {"type": "object", "required": ["purged"],
               "properties": {"purged": {"type": "integer"}}},
}


def document() -> dict[str, Any]:
    errors = {"400": _ERROR, "401": _ERROR, "404": _ERROR, "429": _ERROR}
    post_errors = {**errors, "403": _ERROR, "409": _ERROR, "415": _ERROR, "502": _ERROR}
    return {
        "openapi": "3.0.3",
        "info": {"title": "foxtive dashboard", "version": __version__,
                 "description": "Queues, pools, schedules, dead letters and tasks of a foxtive "
                                "deployment. Changes are POSTs; with a token set, every "
                                "path but /api/info and /api/openapi.json needs "
                                "`Authorization: Bearer <token>`."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _SCHEMAS,
        },
        "paths": {
            "/api/info": {"get": {"summary": "What this dashboard shows",
                                  "operationId": "info", "security": [],
                                  "responses": {"200": _json("Info"), "429": _ERROR}}},
            "/api/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                                          "security": [],
                                          "responses": {"200": {
                                              "description": "OpenAPI 3 document",
                                              "content": {"application/json": {
                                                  "schema": {"type": "object"}}}},
                                              "429": _ERROR}}},
            "/api/queues": {"get": {
                "summary": "Every queue: counts and their recent history",
                "operationId": "queues", "security": _AUTH,
                "parameters": [_q("minutes", {"type": "number", "minimum": 0, "maximum": 60,
                                              "default": 10}, "history window")],
                "responses": {"200": _json("Queues"), **errors}}},
            "/api/pools": {"get": {"summary": "Pools running in this process",
                                   "operationId": "pools", "security": _AUTH,
                                   "responses": {"200": _json("Pools"), **errors}}},
            "/api/schedules": {"get": {
                "summary": "Schedules: next runs (local and UTC), last tick, leader",
                "operationId": "schedules", "security": _AUTH,
                "responses": {"200": _json("Schedules"), **errors}}},
            "/api/dead-letters": {"get": {
                "summary": "Dead letters, filtered and paginated (oldest first)",
                "operationId": "deadLetters", "security": _AUTH,
                "parameters": [
                    _q("queue", {"type": "string"}, "one queue (default: all)"),
                    _q("error_type", {"type": "string"}, "only this error type"),
                    _q("since", {"type": "number", "minimum": 0}, "failed at or after (unix s)"),
                    _q("until", {"type": "number", "minimum": 0}, "failed at or before (unix s)"),
                    _q("offset", {"type": "integer", "minimum": 0, "default": 0}, "skip"),
                    _q("limit", {"type": "integer", "minimum": 1, "maximum": 500,
                                 "default": 50}, "page size")],
                "responses": {"200": _json("DeadLetterPage"), **errors}}},
            "/api/dead-letter": {"get": {
                "summary": "One dead letter: body (text, JSON, hex) and headers",
                "operationId": "deadLetter", "security": _AUTH,
                "parameters": [_q("queue", {"type": "string"}, "its queue", True),
                               _q("id", {"type": "string"}, "its original message id", True)],
                "responses": {"200": _json("DeadLetterDetail"), **errors}}},
            "/api/dead-letters/replay": {"post": {
                "summary": "Replay dead letters to their source queue (one, selected, all)",
                "operationId": "replay", "security": _AUTH,
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ReplayRequest"}}}},
                "responses": {"200": _json("Replayed"), **post_errors}}},
            "/api/dead-letters/purge": {"post": {
                "summary": "Delete every dead letter of a queue (confirm with its name)",
                "operationId": "purge", "security": _AUTH,
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/PurgeRequest"}}}},
                "responses": {"200": _json("Purged"), **post_errors}}},
            "/api/tasks/{task_id}": {"get": {
                "summary": "A task by id: status, attempts, result or error",
                "operationId": "task", "security": _AUTH,
                "parameters": [{"name": "task_id", "in": "path", "required": True,
                                "schema": {"type": "string", "minLength": 1,
                                           "maxLength": 200}}],
                "responses": {"200": _json("Task"), **errors}}},
        },
    }
