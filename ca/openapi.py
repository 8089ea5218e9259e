"""OpenAPI 3.1 description of the CA's REST API (served at /api/v1/openapi.json)."""

from __future__ import annotations

from typing import Any

_PROBLEM = {"$ref": "#/components/responses/Problem"}
_ERRORS = {
    "400": _PROBLEM,
    "401": _PROBLEM,
    "403": _PROBLEM,
    "404": _PROBLEM,
    "409": _PROBLEM,
    "422": _PROBLEM,
}


def _json(ref: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "kakuin CA API",
        "version": "1",
        "description": (
            "E-seal certificates for schools and boards of education. Authenticate with "
            "'Authorization: Bearer <token>' (tokens from `kakuin token create`). Errors are "
            "RFC 9457 application/problem+json with a stable `type`."
        ),
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "paths": {
        "/api/v1/organizations": {
            "post": {
                "summary": "Register a school (board officer, operator) or a board / school "
                "corporation (operator)",
                "requestBody": {"required": True, **_json("NewOrganization")},
                "responses": {
                    "201": {"description": "created", **_json("Organization")},
                    **_ERRORS,
                },
            }
        },
        "/api/v1/organizations/{id}": {
            "get": {
                "summary": "An organization you govern",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
                ],
                "responses": {
                    "200": {"description": "the organization", **_json("Organization")},
                    **_ERRORS,
                },
            }
        },
        "/api/v1/organizations/{id}/confirm": {
            "post": {
                "summary": "Confirm a school a board registered: pending -> active (operator)",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
                ],
                "responses": {
                    "200": {"description": "confirmed", **_json("Organization")},
                    **_ERRORS,
                },
            }
        },
        "/api/v1/organizations/{id}/certificates": {
            "get": {
                "summary": "Certificates of an organization",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
                ],
                "responses": {
                    "200": {"description": "list", **_json("CertificateList")},
                    **_ERRORS,
                },
            }
        },
        "/api/v1/seal-requests": {
            "post": {
                "summary": "Request an e-seal certificate with a CSR or a key hosted in "
                "kakuin's HSM",
                "requestBody": {"required": True, **_json("NewSealRequest")},
                "responses": {
                    "201": {
                        "description": "queued for the board's approval",
                        **_json("SealRequest"),
                    },
                    **_ERRORS,
                },
            }
        },
        "/api/v1/seal-requests/{id}": {
            "get": {
                "summary": "A seal request and, once issued, its certificate",
                "parameters": [
                    {
                        "name": "id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "format": "uuid"},
                    }
                ],
                "responses": {
                    "200": {"description": "the request", **_json("SealRequest")},
                    **_ERRORS,
                },
            }
        },
        "/api/v1/seal-requests/{id}/approve": {
            "post": {
                "summary": "Approve; issues once the profile's approvals_required distinct "
                "approvers (never the requester) have approved. A school's request: an officer "
                "of its board or the operator; a board's own seal: the operator",
                "parameters": [
                    {
                        "name": "id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "format": "uuid"},
                    }
                ],
                "responses": {
                    "200": {"description": "issued", **_json("SealRequest")},
                    "202": {"description": "approval recorded, more approvers needed",
                            **_json("SealRequest")},
                    **_ERRORS,
                },
            }
        },
        "/api/v1/seal-requests/{id}/reject": {
            "post": {
                "summary": "Reject (officer of the school's board, or operator)",
                "parameters": [
                    {
                        "name": "id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "format": "uuid"},
                    }
                ],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"reason": {"type": "string"}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"description": "rejected", **_json("SealRequest")},
                    **_ERRORS,
                },
            }
        },
        "/api/v1/certificates/{serial}": {
            "get": {
                "summary": "A certificate by serial (public; no token needed)",
                "security": [],
                "parameters": [
                    {
                        "name": "serial",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{1,40}$"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "by Accept: JSON, DER or PEM",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Certificate"}
                            },
                            "application/pkix-cert": {
                                "schema": {"type": "string", "format": "binary"}
                            },
                            "application/x-pem-file": {"schema": {"type": "string"}},
                        },
                    },
                    **_ERRORS,
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1"}},
            }
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "responses": {
            "Problem": {
                "description": "RFC 9457 problem details",
                "content": {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                },
            }
        },
        "schemas": {
            "Problem": {
                "type": "object",
                "required": ["type", "title", "status"],
                "properties": {
                    "type": {"type": "string", "format": "uri"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "request_id": {"type": "string"},
                },
            },
            "NewOrganization": {
                "type": "object",
                "required": ["kind", "name_ja"],
                "properties": {
                    "kind": {"enum": ["school", "board", "school_corporation"]},
                    "name_ja": {"type": "string"},
                    "name_en": {"type": "string"},
                    "school_code": {"type": "string", "pattern": "^[A-H][0-9]{12}$"},
                    "board_id": {"type": "integer"},
                    "local_gov_code": {"type": "string", "pattern": "^[0-9]{6}$"},
                    "corporate_number": {"type": "string", "pattern": "^[0-9]{13}$"},
                    "prefecture": {"type": "string", "pattern": "^[0-9]{2}$"},
                },
            },
            "Organization": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "kind": {"type": "string"},
                    "name_ja": {"type": "string"},
                    "name_en": {"type": ["string", "null"]},
                    "school_code": {"type": ["string", "null"]},
                    "local_gov_code": {"type": ["string", "null"]},
                    "corporate_number": {"type": ["string", "null"]},
                    "prefecture": {"type": ["string", "null"]},
                    "parent_id": {"type": ["integer", "null"]},
                    "status": {"enum": ["active", "pending", "closed", "merged"]},
                    "organization_identifier": {"type": ["string", "null"]},
                },
            },
            "NewSealRequest": {
                "type": "object",
                "description": "Exactly one of csr or key.",
                "properties": {
                    "organization_id": {
                        "type": "integer",
                        "description": "default: the caller's organization",
                    },
                    "csr": {
                        "type": "string",
                        "description": "PKCS#10, PEM or base64 DER; "
                        "its subject and extensions are ignored",
                    },
                    "key": {
                        "type": "object",
                        "properties": {
                            "hosted": {"const": True},
                            "algorithm": {
                                "enum": ["ECDSA-P256", "ECDSA-P384", "RSA-2048", "RSA-3072"]
                            },
                        },
                    },
                    "profile": {"type": "string", "default": "eseal"},
                    "replaces_serial": {
                        "type": "string",
                        "description": "renewal / re-key of this certificate",
                    },
                },
            },
            "SealRequest": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "organization_id": {"type": "integer"},
                    "status": {"enum": ["pending", "approved", "rejected", "issued", "failed"]},
                    "profile": {"type": "string"},
                    "key": {"type": "object"},
                    "replaces_serial": {"type": ["string", "null"]},
                    "requested_by": {"type": "object", "description": "client_id, subject"},
                    "approvals_required": {"type": "integer"},
                    "approvals": {"type": "array", "items": {"type": "object"}},
                    "approved_by": {"type": "array", "items": {"type": ["integer", "null"]}},
                    "decided_by": {"type": ["integer", "null"]},
                    "created_at": {"type": "string", "format": "date-time"},
                    "decided_at": {"type": ["string", "null"], "format": "date-time"},
                    "reason": {"type": ["string", "null"]},
                    "certificate": {
                        "oneOf": [{"$ref": "#/components/schemas/Certificate"}, {"type": "null"}]
                    },
                },
            },
            "Certificate": {
                "type": "object",
                "properties": {
                    "serial": {"type": "string"},
                    "issuer_name": {"type": "string"},
                    "kind": {"type": "string"},
                    "subject": {"type": "string"},
                    "organization_id": {"type": ["integer", "null"]},
                    "not_before": {"type": "string", "format": "date-time"},
                    "not_after": {"type": "string", "format": "date-time"},
                    "status": {"type": "string"},
                    "revocation_reason": {"type": ["string", "null"]},
                    "url": {"type": "string"},
                    "pem": {"type": "string"},
                },
            },
            "CertificateList": {
                "type": "object",
                "properties": {
                    "organization_id": {"type": "integer"},
                    "certificates": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/Certificate"},
                    },
                },
            },
        },
    },
}
