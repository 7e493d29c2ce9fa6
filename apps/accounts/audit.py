"""Audit events of a request: log-ins, log-outs, failed log-ins, page views of patient
data and every download of patient data (an image, its lung mask or outline, a CT slice's
masks, an explanation's overlay, colour layer or raw heatmap).

Services record what they change (``apps.accounts.models.record``); these events are
about *who looked*, so the views and Django's authentication signals write them. Each
carries the client address (the one the throttles and django-axes count) and whether it
came through the web pages or the API. Token issue and revocation are recorded by
``apps.accounts.tokens``, lockouts by ``apps.accounts.lockout``.

**One event per page view, not one per file.** A case page of three X-rays makes the
browser fetch about a dozen files (each image, its heatmap layers, its lung outline);
one ``download.*`` event each buried everything else in the log. Now the page itself
writes one ``case.viewed`` (or ``image.viewed``) event that names every file the page
makes the browser load (:func:`record_view`, with :class:`ServedFile` entries), and
*grants* those files to the same user *and session* for :data:`VIEW_WINDOW_SECONDS`
(cache keys). A web file view then calls :func:`record_download`: a file granted by a
view is served without an event of its own, since the view event already says who got
it and when; any other fetch writes its ``download.<kind>`` event as before.

Why a grant rather than dropping the file events of the page-loaded endpoints: those
URLs are not only loaded by pages (a bookmarked or copied image link, a script with a
session cookie, another tab after the window), and the server cannot tell an ``<img>``
fetch from a deliberate one. With the grant every access to patient pixels stays
accounted for, to a user and a time, by exactly one of two events: the view event that
named the file (for that user's session, at most :data:`VIEW_WINDOW_SECONDS` before),
or the file's own ``download.*`` event. What is never granted is always an event:
the explicit download links (overlay with colour bar, raw ``.npy`` map), a mask the
page does not show, and every API file fetch (``/api/``; an API client asks for each
file on purpose). A lost grant (cache flushed, down or per process) only means more
``download.*`` events, never fewer. A live refresh of a page (``static/js/live.js``)
writes no new view event unless it brings files not yet granted (a heatmap that
finished while the page was open): then one ``case.viewed`` with ``"refresh": true``
naming only those.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.core.cache import cache
from django.db import models
from django.dispatch import receiver
from django.http import HttpRequest

from apps.accounts.models import AuditEvent, record

logger = logging.getLogger(__name__)

# What a download event names, by the kind of file (action "download.<kind>").
DOWNLOAD_KINDS = (
    "image",
    "lung_mask",
    "lung_outline",
    "overlay",
    "heatmap_layer",
    "heatmap",
    "ct_mask",  # a CT slice's mask PNG (API)
    "ct_layer",  # a CT slice's mask as the viewer's coloured layer
)
# A page (web) or an answer (API) that shows a case or an image to a user.
VIEW_ACTIONS = ("case.viewed", "image.viewed")
# How long a page view accounts for the fetches of the files it names: the browser loads
# them at once; minutes allow for a slow connection and a tab opened in the background.
VIEW_WINDOW_SECONDS = 300


@dataclass(frozen=True)
class ServedFile:
    """A file a page makes the browser load: the ``download.<kind>`` it stands for, the
    row that event names (``target``: the image, its prediction, segmentation or
    explanation), the image it belongs to and, for a CT mask layer, which mask."""

    kind: str
    target: models.Model
    image_id: int
    name: str = ""

    def to_json(self) -> dict[str, object]:
        entry: dict[str, object] = {"kind": self.kind, "id": self.target.pk, "image": self.image_id}
        if self.name:
            entry["name"] = self.name
        return entry


def request_context(request: HttpRequest | None) -> dict[str, str]:
    """The client address and channel of a request, for an event's ``after``."""
    if request is None:
        return {}
    from apps.accounts.lockout import client_address

    request = getattr(request, "_request", request)  # a DRF Request wraps Django's
    return {
        "address": client_address(request) or "",
        "via": "api" if request.path.startswith("/api/") else "web",
    }


def _grant_key(request: HttpRequest, kind: str, target: models.Model, name: str) -> str | None:
    """The cache key that says "a page view of this session named this file", or None
    where no grant applies: the API (every file fetch there is its own event), a request
    without a session."""
    request = getattr(request, "_request", request)
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if request.path.startswith("/api/") or not session_key or not request.user.is_authenticated:
        return None
    session = hashlib.sha256(session_key.encode()).hexdigest()[:24]  # not the cookie itself
    parts = ["audit-view", session, str(request.user.pk), kind, target._meta.label, str(target.pk)]
    return ":".join([*parts, name])


def _granted(keys: list[str]) -> set[str]:
    """The keys still granted; none when the cache cannot answer (the files' fetches are
    then audited one by one: more events, never fewer)."""
    try:
        return set(cache.get_many(keys)) if keys else set()
    except Exception:
        logger.exception("Audit: the cache cannot say which files a page view granted.")
        return set()


def record_view(
    request: HttpRequest,
    *,
    action: str,
    target: models.Model,
    files: Iterable[ServedFile] = (),
    refresh: bool = False,
    **details: Any,
) -> AuditEvent | None:
    """One ``case.viewed`` / ``image.viewed`` event for a page (or API answer) that shows
    ``target``, naming the ``files`` the page makes the browser load, which are granted to
    this user's session for :data:`VIEW_WINDOW_SECONDS` (see the module's docstring).

    ``refresh``: a live refresh of a page already viewed; it records only files not yet
    granted (then with ``"refresh": true``), and nothing, returning None, when there are
    none. ``details`` go into the event's ``after`` (JSON values).
    """
    if action not in VIEW_ACTIONS:
        raise ValueError(f"Unknown view action {action!r}; one of {VIEW_ACTIONS}.")
    unique = list(dict.fromkeys(files))  # in page order; a thumbnail and its viewer: one file
    keys = {file: _grant_key(request, file.kind, file.target, file.name) for file in unique}
    if refresh:
        granted = _granted([key for key in keys.values() if key])
        unique = [file for file in unique if keys[file] not in granted]
        if not unique:
            return None
    after: dict[str, Any] = {**details, "files": [file.to_json() for file in unique]}
    if refresh:
        after["refresh"] = True
    event = record(
        actor=request.user, action=action, target=target, after=after | request_context(request)
    )
    grants = {key: event.pk for file in unique if (key := keys[file])}
    if grants:
        try:
            cache.set_many(grants, timeout=VIEW_WINDOW_SECONDS)
        except Exception:
            logger.exception("Audit: page view %s granted no files (cache).", event.pk)
    return event


def record_download(
    request: HttpRequest, *, kind: str, target: models.Model, name: str = ""
) -> AuditEvent | None:
    """The event of one file served to a user (call once access is granted and the file
    found): ``download.<kind>``, unless a page view of this user's session named this
    file (``kind``, ``target``, ``name``: which CT mask) in the last
    :data:`VIEW_WINDOW_SECONDS`; that ``case.viewed`` / ``image.viewed`` event accounts
    for it, and None is returned."""
    if kind not in DOWNLOAD_KINDS:
        raise ValueError(f"Unknown download kind {kind!r}; one of {DOWNLOAD_KINDS}.")
    key = _grant_key(request, kind, target, name)
    if key is not None and _granted([key]):
        return None
    after = request_context(request)
    if name:
        after["name"] = name
    return record(actor=request.user, action=f"download.{kind}", target=target, after=after)


def _account_event(action: str, username: str, request, **extra: Any) -> AuditEvent:
    """An event about an account named by username, which may not exist."""
    username = (username or "")[:150]
    user = get_user_model().objects.filter(username=username).first()
    after = {"username": username, **request_context(request), **extra}
    if user is not None:
        return record(actor=None, action=action, target=user, after=after)
    # No such account: still recorded (someone is guessing), without a target row.
    return AuditEvent.objects.create(
        actor=None,
        action=action,
        target_type=get_user_model()._meta.label,
        target_id="",
        after=after,
    )


@receiver(user_logged_in, dispatch_uid="cxr-audit-login")
def audit_login(sender, request, user, **kwargs) -> None:
    record(actor=user, action="auth.login", target=user, after=request_context(request))


@receiver(user_logged_out, dispatch_uid="cxr-audit-logout")
def audit_logout(sender, request, user, **kwargs) -> None:
    if user is not None:  # logging out without a session: nothing to record
        record(actor=user, action="auth.logout", target=user, after=request_context(request))


@receiver(user_login_failed, dispatch_uid="cxr-audit-login-failed")
def audit_login_failed(sender, credentials, request=None, **kwargs) -> None:
    """Wrong password, unknown user or a locked account, on any log-in page or the token
    endpoint. The password never reaches this (Django masks it in ``credentials``)."""
    _account_event("auth.login_failed", str(credentials.get("username") or ""), request)
