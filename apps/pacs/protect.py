"""The protected mapping's sealing: the original study's identifiers, encrypted.

What the return path needs of the original study (its UIDs, the patient's ID and name)
is sealed with Fernet (AES-128-CBC and HMAC-SHA256) under ``CXR_PACS_MAPPING_KEY``
(by default a key derived from ``SECRET_KEY``), so a copy of the database alone, or a
dump of the cases' tables, does not show them. A study is found again (its later
associations join its case) by :func:`study_key`, a keyed hash of its UID under the same
secret, never the UID itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from cryptography.fernet import Fernet
from django.conf import settings


def _secret() -> str:
    return settings.CXR_PACS_MAPPING_KEY or settings.SECRET_KEY


def _fernet() -> Fernet:
    secret = _secret()
    key = base64.urlsafe_b64encode(hashlib.sha256(b"cxr-pacs-mapping:" + secret.encode()).digest())
    return Fernet(key)


def seal(value: dict[str, Any]) -> bytes:
    return _fernet().encrypt(json.dumps(value, sort_keys=True).encode())


def unseal(token: bytes | memoryview) -> dict[str, Any]:
    return json.loads(_fernet().decrypt(bytes(token)))


def study_key(study_uid: str) -> str:
    """HMAC-SHA256 of an original Study Instance UID (``StudyLink.study_key``)."""
    digest = hmac.new(_secret().encode(), b"cxr-pacs-study:" + study_uid.encode(), hashlib.sha256)
    return digest.hexdigest()
