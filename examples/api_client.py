#!/usr/bin/env python3
"""Example REST API client: upload chest X-rays, wait for the prediction and the
Grad-CAM, download the overlay PNGs; or, with --ct, upload chest CT slices, wait for the
segmentation and download its mask PNGs.

Standard library only, so it runs anywhere Python 3.11 does (a PACS bridge, a
research machine) without installing anything:

    python examples/api_client.py --url http://127.0.0.1:8000 \\
        --username clinician --password clinician-demo-pass \\
        --out overlays/ tests/fixtures/images/2168a917.jpg

or with a token from POST /api/v1/auth/token/ (``--token KEY`` or the
CXR_API_TOKEN environment variable; tokens expire, 24 h by default, and a 401
"Invalid token." means obtain a new one). A token the client obtained itself is
revoked when it finishes. With ``--ct`` the files are CT slices (PNG/JPEG, or DICOM
with Modality CT): it prints the percent of lung affected per slice and writes the masks
(lungs, infection, ground-glass, consolidation) as PNGs.

    python examples/api_client.py --ct --url http://127.0.0.1:8000 \\
        --username clinician --password clinician-demo-pass --out masks/ slice.png

Exit status: 0 when every image has a prediction and a Grad-CAM overlay (every slice a
segmentation with --ct), 1 on a refusal or failure, 2 on a timeout.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import sys
import time
import uuid
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urljoin
from urllib.request import Request, urlopen

CLASSES = ("covid19", "pneumonia", "normal")


class ApiError(Exception):
    """An HTTP error with the API's error body, in words."""


class Client:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 60) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.token = token
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        url = urljoin(self.base_url, path)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Token {self.token}"
        if content_type:
            headers["Content-Type"] = content_type
        request = Request(url, data=body, method=method, headers=headers)  # noqa: S310
        try:
            with urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - user's URL
                return response.status, dict(response.headers), response.read()
        except HTTPError as exc:
            raise ApiError(f"{method} {url}: {_describe(exc.code, exc.read())}") from None
        except URLError as exc:
            raise ApiError(f"{method} {url}: cannot reach the server ({exc.reason}).") from None

    def json(self, method: str, path: str, payload: dict | None = None) -> dict:
        body = json.dumps(payload).encode() if payload is not None else None
        _, _, content = self.request(
            method, path, body=body, content_type="application/json" if body else None
        )
        return json.loads(content) if content else {}

    def obtain_token(self, username: str, password: str) -> str:
        self.token = None
        self.token = self.json(
            "POST", "api/v1/auth/token/", {"username": username, "password": password}
        )["token"]
        return self.token

    def revoke_token(self) -> None:
        """Revoke the token this client sends (DELETE /api/v1/auth/token/)."""
        self.request("DELETE", "api/v1/auth/token/")
        self.token = None

    def create_case(
        self, images: list[Path], patient_ref: str = "", notes: str = "", modality: str = "xray"
    ) -> dict:
        fields = [("patient_ref", patient_ref), ("notes", notes), ("modality", modality)]
        body, content_type = _multipart(fields, [("images", path) for path in images])
        _, _, content = self.request("POST", "api/v1/cases/", body=body, content_type=content_type)
        return json.loads(content)

    def download(self, url: str, destination: Path) -> Path:
        _, _, content = self.request("GET", url)
        destination.write_bytes(content)
        return destination


def _describe(status: int, content: bytes) -> str:
    try:
        error = json.loads(content)["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}"
    fields = "; ".join(f"{k}: {' '.join(v)}" for k, v in error.get("fields", {}).items())
    return f"HTTP {status} {error['code']}: {error['message']}" + (f" ({fields})" if fields else "")


def _multipart(fields: list[tuple[str, str]], files: list[tuple[str, Path]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value}\r\n".encode()
        )
    for name, path in files:
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{path.name}"\r\nContent-Type: {mime}\r\n\r\n'.encode()
            + path.read_bytes()
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _gradcam(image: dict) -> dict | None:
    return next((e for e in image["explanations"] if e["method"] == "gradcam"), None)


def _segmentation_pending(image: dict) -> str | None:
    """What a CT slice still waits for (None when its segmentation is done)."""
    segmentation = image["segmentation"]
    if segmentation is None or segmentation["status"] in {"pending", "running"}:
        return f"image {image['id']}: segmentation {segmentation and segmentation['status']}"
    if segmentation["status"] == "failed":
        raise ApiError(f"image {image['id']}: segmentation failed: {segmentation['error']}")
    return None


def wait_for_results(
    client: Client, case_id: int, timeout: float, interval: float, *, ct: bool = False
) -> dict:
    """Poll the case until every image has a finished prediction and Grad-CAM (every CT
    slice a finished segmentation)."""
    deadline = time.monotonic() + timeout
    while True:
        case = client.json("GET", f"api/v1/cases/{case_id}/")
        pending = []
        for image in case["images"]:
            if ct:
                waiting = _segmentation_pending(image)
                if waiting:
                    pending.append(waiting)
                continue
            prediction = image["prediction"]
            if prediction is None or prediction["status"] in {"pending", "running"}:
                pending.append(
                    f"image {image['id']}: prediction {prediction and prediction['status']}"
                )
                continue
            if prediction["status"] == "failed":
                raise ApiError(f"image {image['id']}: prediction failed: {prediction['error']}")
            gradcam = _gradcam(image)
            if gradcam is None or gradcam["status"] in {"pending", "running"}:
                pending.append(f"image {image['id']}: Grad-CAM {gradcam and gradcam['status']}")
            elif gradcam["status"] == "failed":
                raise ApiError(f"image {image['id']}: Grad-CAM failed: {gradcam['error']}")
        if not pending:
            return case
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"case {case_id} not finished after {timeout:.0f} s: " + "; ".join(pending)
            )
        time.sleep(interval)


def _report_slice(client: Client, case_id: int, source: Path, image: dict, out: Path) -> None:
    """Print a CT slice's figures and download its masks."""
    segmentation = image["segmentation"]
    model = segmentation["model_version"]["name"]
    if not segmentation["lungs_found"]:
        print(f"{source.name}: no lung tissue found ({segmentation['message']}) by model {model}")
        return
    paths = [
        client.download(url, out / f"case{case_id}-image{image['id']}-{kind}.png")
        for kind, url in segmentation["masks"].items()
    ]
    print(
        f"{source.name}: {segmentation['percent_affected']:.1f}% of the lung affected "
        f"(ground-glass {segmentation['percent_ggo']:.1f}%, consolidation "
        f"{segmentation['percent_consolidation']:.1f}%) by model {model}; masks "
        + ", ".join(str(p) for p in paths)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "images", nargs="+", type=Path, help="PNG, JPEG or DICOM chest X-rays (CT slices with --ct)"
    )
    parser.add_argument("--ct", action="store_true", help="the files are chest CT slices")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="platform base URL")
    parser.add_argument("--username", help="log in with a username and password ...")
    parser.add_argument("--password", default=os.environ.get("CXR_API_PASSWORD"))
    parser.add_argument("--token", default=os.environ.get("CXR_API_TOKEN"), help="... or a token")
    parser.add_argument("--patient-ref", default="", help="pseudonymous patient reference")
    parser.add_argument("--notes", default="")
    parser.add_argument(
        "--out", type=Path, default=Path("overlays"), help="where overlays (CT: masks) go"
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for results")
    parser.add_argument("--interval", type=float, default=2, help="seconds between polls")
    args = parser.parse_args(argv)

    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    if not args.token and not (args.username and args.password):
        parser.error("give --token (or CXR_API_TOKEN), or --username and --password")

    client = Client(args.url, token=args.token)
    try:
        if not args.token:
            client.obtain_token(args.username, args.password)
            print(f"obtained an API token for {args.username}")
        case = client.create_case(
            args.images,
            patient_ref=args.patient_ref,
            notes=args.notes,
            modality="ct" if args.ct else "xray",
        )
        print(f"created case {case['id']} with {len(case['images'])} image(s); waiting ...")
        case = wait_for_results(client, case["id"], args.timeout, args.interval, ct=args.ct)
        args.out.mkdir(parents=True, exist_ok=True)
        for source, image in zip(args.images, case["images"], strict=True):
            if args.ct:
                _report_slice(client, case["id"], source, image, args.out)
                continue
            prediction = image["prediction"]
            probabilities = ", ".join(
                f"{label} {prediction['probabilities'][label]:.3f}" for label in CLASSES
            )
            gradcam = _gradcam(image)
            if gradcam is None:  # wait_for_results waits for one on every image
                raise ApiError(f"image {image['id']}: no Grad-CAM")
            overlay = client.download(
                gradcam["overlay_url"],
                args.out / f"case{case['id']}-image{image['id']}-gradcam.png",
            )
            print(
                f"{source.name}: {prediction['label']} ({probabilities}) "
                f"by model {prediction['model_version']['name']}; overlay {overlay}"
            )
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except TimeoutError as exc:
        print(f"timeout: {exc}", file=sys.stderr)
        return 2
    finally:
        if client.token and not args.token:  # ours: do not leave it valid until it expires
            try:
                client.revoke_token()
                print("revoked the API token")
            except ApiError as exc:
                print(f"warning: could not revoke the API token: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
