"""The one family of domain refusals.

A service raises a :class:`Refused` subclass when a well-formed request cannot be
done now or here: a retry of a job that did not fail, a promotion the gate refuses,
a label on an image that is not waiting for one, a second training run while one is
running. The message is written for the person who asked. A web view shows it on the
page; the API answers 409 with it, in one place (``apps.api.exceptions``), so an API
view calls its service and never maps these errors itself.

Input that is wrong whatever the state (a bad upload, an unknown field) is not a
refusal: forms and serializers reject it with 400.
"""

from __future__ import annotations


class Refused(Exception):  # noqa: N818 - reads as what happened to the request
    """The request is well formed, but the current state does not allow it (409)."""
