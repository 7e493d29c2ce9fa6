"""Two ways to run a saved model on a batch: Keras or LiteRT.

* :class:`KerasRunner`: the model called through a ``tf.function`` with a fixed
  input signature (``model.predict`` builds a data pipeline per call). Explanation and
  training workers use it: they need the Keras graph for gradients.
* :class:`LiteRunner`: the same network converted to a ``.tflite`` flatbuffer and run
  by the LiteRT interpreter (``ai_edge_litert``), which does not import TensorFlow. The
  inference queue uses it: a worker that never imports TensorFlow needs a fraction of
  the memory.

:func:`convert_to_lite` writes ``<stem>.tflite`` beside a ``.keras`` file with a
sidecar ``<stem>.tflite.json`` naming both files' sha256, so a lite file is only ever
served for the Keras artifact it was made from (:func:`load_lite_runner` checks both
hashes). Only :func:`convert_to_lite` and :class:`KerasRunner` import TensorFlow.
"""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ml.models.artifacts import ArtifactIntegrityError, sha256_file

LITE_SUFFIX = ".tflite"


class KerasRunner:
    """Call a Keras model on float32 batches through a traced ``tf.function``."""

    def __init__(self, model: Any) -> None:
        import tensorflow as tf

        self.model = model
        self.input_shape: tuple[int, ...] = tuple(model.input_shape[1:])
        self.output_shape: tuple[int, ...] = tuple(model.output_shape[1:])
        self._tf = tf
        self._call = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec((None, *self.input_shape), tf.float32)],
            reduce_retracing=True,
        )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        result: np.ndarray = self._call(self._tf.convert_to_tensor(batch, self._tf.float32)).numpy()
        return result


class LiteRunner:
    """Run a ``.tflite`` model with the LiteRT interpreter (no TensorFlow import).

    The interpreter keeps one set of tensors: the input is resized when the batch size
    changes, and calls are serialised by a lock (a worker's threads share one runner).
    """

    def __init__(self, path: str | Path, *, num_threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self._interpreter = Interpreter(model_path=str(self.path), num_threads=num_threads)
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"{self.path.name}: expected one input and one output, got "
                f"{len(inputs)} and {len(outputs)}."
            )
        self._input = int(inputs[0]["index"])
        self._output_detail = outputs[0]
        self.input_shape = tuple(int(d) for d in inputs[0]["shape"][1:])
        self.output_shape = tuple(int(d) for d in outputs[0]["shape"][1:])
        self._batch = 0
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.shape[1:] != self.input_shape:
            raise ValueError(
                f"{self.path.name}: expected a batch of shape (n, "
                f"{', '.join(map(str, self.input_shape))}), got {batch.shape}."
            )
        with self._lock:
            if batch.shape[0] != self._batch:
                self._interpreter.resize_tensor_input(self._input, batch.shape, strict=False)
                self._interpreter.allocate_tensors()
                self._batch = batch.shape[0]
            self._interpreter.set_tensor(self._input, batch)
            self._interpreter.invoke()
            # The output index is looked up after allocate_tensors (resizing may renumber).
            output = self._interpreter.get_output_details()[0]["index"]
            result: np.ndarray = self._interpreter.get_tensor(output).copy()
        return result


def lite_path_for(keras_path: str | Path) -> Path:
    return Path(keras_path).with_suffix(LITE_SUFFIX)


def _sidecar(lite_path: Path) -> Path:
    return lite_path.with_name(lite_path.name + ".json")


def convert_to_lite(keras_path: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Convert a ``.keras`` model to ``.tflite`` (float32, no quantisation) beside it.

    Returns the sidecar record: ``artifact`` (the lite file's name), ``sha256``,
    ``source_sha256`` (the Keras file's) and the converter's TensorFlow version.
    """
    import keras
    import tensorflow as tf

    keras_path = Path(keras_path)
    out_path = Path(out) if out is not None else lite_path_for(keras_path)
    model = keras.saving.load_model(keras_path, compile=False)
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "saved_model"
        model.export(saved, format="tf_saved_model", verbose=False)
        data = tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert()
    partial = out_path.with_name(out_path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(out_path)
    record = {
        "artifact": out_path.name,
        "sha256": sha256_file(out_path),
        "source": keras_path.name,
        "source_sha256": sha256_file(keras_path),
        "converter": f"tensorflow {tf.__version__}",
    }
    _sidecar(out_path).write_text(json.dumps(record, indent=2) + "\n")
    return record


def read_lite_record(lite_path: str | Path) -> dict[str, Any]:
    path = _sidecar(Path(lite_path))
    if not path.exists():
        raise FileNotFoundError(
            f"{path.name} is missing: convert the model with `python -m ml lite convert`."
        )
    record: dict[str, Any] = json.loads(path.read_text())
    return record


def load_lite_runner(
    lite_path: str | Path,
    *,
    source_sha256: str | None = None,
    num_threads: int | None = None,
    record: dict[str, Any] | None = None,
) -> LiteRunner:
    """A runner for a converted model, refusing a file whose hash is not the recorded one
    or one converted from another Keras artifact than ``source_sha256``.

    ``record``: the conversion record (what :func:`convert_to_lite` returns) when the
    caller keeps it elsewhere (the model registry keeps it in the version's card);
    otherwise the sidecar beside the file is read."""
    lite_path = Path(lite_path)
    if record is None:
        record = read_lite_record(lite_path)
    actual = sha256_file(lite_path)
    if actual != record["sha256"]:
        raise ArtifactIntegrityError(
            f"{lite_path.name} has sha256 {actual}, its record says {record['sha256']}."
        )
    if source_sha256 is not None and record["source_sha256"] != source_sha256:
        raise ArtifactIntegrityError(
            f"{lite_path.name} was converted from a Keras file with sha256 "
            f"{record['source_sha256']}, not {source_sha256}: convert it again."
        )
    return LiteRunner(lite_path, num_threads=num_threads)


def add_lite_parser(sub: Any) -> None:
    """``python -m ml lite convert MODEL.keras ...``: write ``.tflite`` + record beside each."""

    def run(args: Any) -> int:
        for path in args.models:
            if not Path(path).exists():
                raise SystemExit(f"{path}: no such file")
            record = convert_to_lite(path)
            print(f"{path} -> {record['artifact']} (sha256 {record['sha256'][:12]})")
        return 0

    task = sub.add_parser("lite", help="LiteRT: convert .keras models")
    verbs = task.add_subparsers(dest="lite_command", required=True)
    p = verbs.add_parser("convert", help="convert .keras models for the LiteRT interpreter")
    p.add_argument("models", nargs="+", type=Path, help=".keras files")
    p.set_defaults(func=run)
