"""Models you already have, brought into the store: Paddle Inference exports and Keras files.

A PaddleClas / PP-ShiTu feature extractor exported for Paddle Inference (a
folder with ``inference.json`` or ``inference.pdmodel`` and
``inference.pdiparams``) or a Keras model saved as one ``.keras`` file becomes
an encoder like ours: a store folder with a manifest written at import (input
size, normalisation, input and output, checksums). From then on it embeds
fields, answers queries by image file and makes the synthetic copies of the
label-free duplicate threshold exactly as a trained encoder does, because every
path loads it by name from the store.

Safety, as for every model folder: only the model's own files are copied,
each a regular file opened without following links (a link is refused);
nothing is unpickled (Paddle's program and parameters are protobuf/JSON and raw
tensors, a ``.keras`` file is JSON plus HDF5 weights, loaded in Keras's safe
mode so that no serialised Python code such as a ``Lambda`` layer runs);
anything else in the folder (``*.pkl``, configs) is left behind and named.

Normalisation is one rule, recorded in the manifest and applied by both
kinds: ``(x * scale - mean) / std`` per channel on RGB pixels ``x`` in 0..255.
PP-ShiTu's exports expect ImageNet's (scale 1/255, the mean and std below);
a Keras model that rescales inside itself expects the identity (the default).
"""

import os
import shutil
import tempfile

import numpy as np

from lookalike.core import faults, leases
from lookalike.encoders import store
from lookalike.encoders.base import Encoder
from lookalike.core.errors import EncoderStoreError

PADDLE_INFERENCE, KERAS = store.FOREIGN_KINDS

IMAGENET = dict(scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
IDENTITY = dict(scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
NORMALIZATIONS = {"imagenet": IMAGENET, "none": IDENTITY}
# Where a user says nothing: what PaddleClas exports and what a Keras model that
# rescales inside itself expect.
DEFAULT_NORMALIZATION = {PADDLE_INFERENCE: "imagenet", KERAS: "none"}
# The names a Paddle Inference export goes by, PaddleClas's first.
PADDLE_PROGRAMS = (".json", ".pdmodel")
KERAS_FILE = "model.keras"
IMPORT_STAGING = ".import-"  # .<name>.import-<process tag>-<random>: an import in progress


def _normalization(scale, mean, std):
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != 3 or len(std) != 3 or not all(s > 0 for s in std) or not float(scale) > 0:
        raise EncoderStoreError("normalisation needs a positive scale and 3 means and 3 positive "
                                f"standard deviations (RGB), got scale {scale}, mean {mean}, "
                                f"std {std}")
    return dict(scale=float(scale), mean=mean, std=std)


def _preprocessing(layout, normalize):
    return dict(decode="jpeg-draft", resize="bilinear", color="RGB", layout=layout,
                scale="(x * scale - mean) / std, per RGB channel", normalize=normalize)


def normalized(images, preprocessing):
    """(N, S, S, 3) uint8 -> float32 in the manifest's layout, normalised as it records."""
    rule = preprocessing["normalize"]
    x = np.asarray(images, dtype=np.float32) * np.float32(rule["scale"])
    x = (x - np.asarray(rule["mean"], np.float32)) / np.asarray(rule["std"], np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if preprocessing["layout"] == "NCHW"
                                else x)


def _flat(out):
    out = np.asarray(out, dtype=np.float32)
    return out.reshape(len(out), -1)


# -- loading ---------------------------------------------------------------------------

class PaddleInferenceEncoder(Encoder):
    """A Paddle Inference export: the program's first input and its recorded output."""

    def __init__(self, path, manifest, threads=None):
        super().__init__(path, manifest)
        from lookalike.core import frameworks

        paddle = frameworks.paddle()
        store.check_framework_version(manifest, paddle.__version__)
        import paddle.inference as paddle_infer

        files = manifest["architecture"]
        # Only files inside the folder that the manifest lists (checksums verified on load).
        config = paddle_infer.Config(store.model_file(path, manifest, "architecture.program"),
                                     store.model_file(path, manifest, "architecture.params"))
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(threads or os.cpu_count() or 1)
        config.disable_glog_info()
        try:
            self._predictor = paddle_infer.create_predictor(config)
        except Exception as e:  # noqa: BLE001 - Paddle raises many kinds for a bad program
            raise EncoderStoreError(f"{path}: Paddle Inference cannot load the model "
                                    f"({str(e).strip().splitlines()[0] if str(e) else e})") from None
        names = self._predictor.get_output_names()
        output = files.get("output") or names[0]
        if output not in names:
            raise EncoderStoreError(f"{path}: the model has no output '{output}' (it has "
                                    f"{', '.join(names)})")
        self._input = self._predictor.get_input_handle(self._predictor.get_input_names()[0])
        self._output = self._predictor.get_output_handle(output)

    def _forward(self, images):
        self._input.reshape([len(images), 3, self.image_size, self.image_size])
        self._input.copy_from_cpu(normalized(images, self.manifest["preprocessing"]))
        self._predictor.run()
        return _flat(self._output.copy_to_cpu())


# Keras's own modules, as a .keras config names them ("keras.layers", "tf_keras.src...").
_KERAS_PACKAGES = ("keras", "tf_keras")
_KERAS_CONFIG_LIMIT = 64 * 2**20  # bytes of config.json read to check it


def _foreign_code(config):
    """``module.name`` of the first object in a ``.keras`` config that is not Keras's own,
    else None. The compile config is skipped (never loaded: ``compile=False``)."""
    import builtins

    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(v for k, v in node.items() if k != "compile_config")
        module, name = node.get("module"), node.get("class_name")
        if "class_name" not in node or "module" not in node or module is None:
            continue  # not a serialised object, or one Keras resolves by its own names
        if name == "function":
            name = node.get("config")
        named = f"{module}.{name}"
        if not isinstance(module, str) or not isinstance(name, str) or "." in name:
            return named  # "os.system" as a name reaches os through a module's globals
        if module == "builtins":
            # Keras looks such a function up among its own first, then in Python's builtins.
            if hasattr(builtins, name):
                return named
        elif module.split(".")[0] not in _KERAS_PACKAGES:
            return named
    return None


def _check_keras_config(path):
    """Refuses a ``.keras`` file whose config names code outside Keras, before Keras reads
    it: Keras imports whatever module a config names (safe mode stops only serialised
    lambdas), and importing a module runs its code."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            if archive.getinfo("config.json").file_size > _KERAS_CONFIG_LIMIT:
                raise EncoderStoreError(f"{path}: its config.json is larger than "
                                        f"{_KERAS_CONFIG_LIMIT // 2**20} MB: not a model")
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, RecursionError, zipfile.BadZipFile) as e:
        raise EncoderStoreError(f"{path}: not a Keras model file (a zip archive with a "
                                f"config.json: {_reason(e)})") from None
    named = _foreign_code(config)
    if named:
        raise EncoderStoreError(f"{path}: refused: its config names {named}, which is not part "
                                "of Keras (a model file may use only Keras's own layers and "
                                "functions; loading it would run that code)")


def _reason(error, limit=200):
    """An exception's first line, shortened: Keras's reasons quote whole configs."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= limit else text[:limit].rstrip() + " ..."


def _load_keras_file(path):
    """The tf-keras model of a ``.keras`` file, in safe mode (no serialised code runs), once
    its config names nothing outside Keras."""
    from lookalike.core import frameworks

    _check_keras_config(path)
    tf = frameworks.tensorflow()
    try:
        model = tf.keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # noqa: BLE001 - Keras raises many kinds for a file it refuses
        raise EncoderStoreError(f"{path}: Keras cannot load it in safe mode "
                                f"({_reason(e)})") from None
    if not isinstance(model, tf.keras.Model):
        raise EncoderStoreError(f"{path}: holds a {type(model).__name__}, not a Keras model")
    return model


class KerasFileEncoder(Encoder):
    """A Keras model from its ``.keras`` file (architecture and weights, no code)."""

    def __init__(self, path, manifest, batch_size=256):
        super().__init__(path, manifest)
        from lookalike.core import frameworks

        tf = frameworks.tensorflow()
        store.check_framework_version(manifest, tf.__version__)
        self.model = _load_keras_file(store.model_file(path, manifest, "architecture.file"))
        self.batch_size = int(batch_size)
        model = self.model
        size = self.image_size
        spec = [tf.TensorSpec([None, size, size, 3], tf.float32, name="images")]
        self._embed_fn = tf.function(lambda x: model(x, training=False), input_signature=spec)

    def _forward(self, images):
        x = normalized(images, self.manifest["preprocessing"])
        out = [self._embed_fn(x[i:i + self.batch_size]).numpy()
               for i in range(0, len(x), self.batch_size)]
        return _flat(np.concatenate(out))


ENCODER_CLASSES = {PADDLE_INFERENCE: PaddleInferenceEncoder, KERAS: KerasFileEncoder}


# -- importing -------------------------------------------------------------------------

def _paddle_files(directory):
    """``(program, params)`` names of the Paddle Inference export in ``directory``."""
    names = set(os.listdir(directory))
    prefixes = sorted({n[:-len(".pdiparams")] for n in names if n.endswith(".pdiparams")},
                      key=lambda p: p != "inference")
    for prefix in prefixes:
        for ext in PADDLE_PROGRAMS:
            if prefix + ext in names:
                return prefix + ext, prefix + ".pdiparams"
    raise EncoderStoreError(
        f"{directory}: no Paddle Inference export (a <prefix>.json or <prefix>.pdmodel program "
        "beside its <prefix>.pdiparams, as paddle.jit.save or PaddleClas's export_model write)")


def _publish_checked(staging_model, manifest, files, name, store_dir, overwrite):
    """Writes the manifest, loads and runs the model on one blank image, records its output
    size, then publishes the folder as ``name``; returns the encoder's path."""
    manifest.setdefault("embedding_size", 0)
    store.write_manifest(staging_model, manifest, files)
    encoder = ENCODER_CLASSES[manifest["kind"]](staging_model,
                                                store.read_manifest(staging_model))
    out = encoder.embed(np.zeros((1, encoder.image_size, encoder.image_size, 3), np.uint8),
                        normalize=False)
    if out.shape[1] < 2:
        raise EncoderStoreError(f"{manifest['imported_from']}: the model's output has "
                                f"{out.shape[1]} value per image: not an embedding")
    manifest["embedding_size"] = int(out.shape[1])
    store.write_manifest(staging_model, manifest, files)
    final = store.encoder_dir(name, store_dir)
    faults.point("import.checked")  # complete in the staging folder, not published
    return store.publish(staging_model, final, overwrite=overwrite)


def _staged_import(name, store_dir, overwrite, fill):
    """Runs ``fill(staging folder) -> path`` in a fresh folder of the store; cleans it up."""
    name = store.validate_name(name)
    store_dir = store_dir or store.default_store_dir()
    if os.path.exists(store.encoder_dir(name, store_dir)) and not overwrite:
        raise EncoderStoreError(f"an encoder named '{name}' already exists: choose another "
                                "name or pass overwrite=True")
    os.makedirs(store_dir, exist_ok=True)
    for entry in os.listdir(store_dir):  # left by imports killed on this host
        if entry.startswith(".") and IMPORT_STAGING in entry and leases.abandoned(entry):
            shutil.rmtree(os.path.join(store_dir, entry), ignore_errors=True)
    staging = tempfile.mkdtemp(prefix=f".{name}{IMPORT_STAGING}{leases.process_tag()}",
                               dir=store_dir)
    try:
        model = os.path.join(staging, "encoder")
        os.makedirs(model)
        return fill(model)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def import_paddle_inference(directory, name, image_size, scale=IMAGENET["scale"],
                            mean=IMAGENET["mean"], std=IMAGENET["std"], output=None,
                            store_dir=None, overwrite=False):
    """Imports a Paddle Inference export (PaddleClas, PP-ShiTu, ``paddle.jit.save``) as encoder
    ``name``; returns an :class:`~lookalike.encoders.store.ImportResult`.

    ``image_size``: the square input the model expects (PP-ShiTu: 224);
    ``scale``, ``mean``, ``std``: its input normalisation (default ImageNet's, as
    PaddleClas's ``inference.yml`` says); ``output``: the output tensor to use
    (default the first). The input must be NCHW with 3 channels.
    """
    from lookalike.core import frameworks
    source = os.path.abspath(os.path.expanduser(directory))
    if not os.path.isdir(source) or os.path.islink(source):
        raise EncoderStoreError(f"{source}: no such model folder (links are not followed)")
    program, params = _paddle_files(source)
    size = _check_size(image_size, source)
    normalize = _normalization(scale, mean, std)

    def fill(model):
        with store.naming_the_source((model, source)):
            return fill_checked(model)

    def fill_checked(model):
        for rel in (program, params):
            store.copy_regular_file(source, rel, os.path.join(model, rel))
        manifest = dict(
            name=name, kind=PADDLE_INFERENCE, framework="paddle",
            framework_version=frameworks.paddle().__version__,
            architecture=dict(program=program, params=params, output=output, layout="NCHW"),
            image_size=size, preprocessing=_preprocessing("NCHW", normalize), metric="cosine",
            imported_from=source, imported_at=store.now_iso(),
            training_data=dict(dataset=None, imported_from=source))
        return _publish_checked(model, manifest, [program, params], name, store_dir, overwrite)

    path = _staged_import(name, store_dir, overwrite, fill)
    return store.ImportResult(path, store.left_behind_entries(source, {program, params}))


def import_keras(path, name, image_size=None, scale=IDENTITY["scale"], mean=IDENTITY["mean"],
                 std=IDENTITY["std"], store_dir=None, overwrite=False):
    """Imports a Keras model saved as one ``.keras`` file (tf-keras) as encoder ``name``;
    returns an :class:`~lookalike.encoders.store.ImportResult`.

    The file is loaded in safe mode (a model holding serialised Python code, such
    as a ``Lambda`` layer, is refused). Its input must be ``(S, S, 3)`` images
    (``image_size`` where the model leaves the size open); ``scale``, ``mean``,
    ``std``: the normalisation it expects outside itself (default none: pixels
    0..255, for a model that rescales inside).
    """
    from lookalike.core import frameworks
    source = os.path.abspath(os.path.expanduser(path))
    folder, file = os.path.split(source)
    if not file.endswith(".keras"):
        raise EncoderStoreError(f"{source}: not a .keras file (save the model with "
                                "model.save('name.keras'))")
    normalize = _normalization(scale, mean, std)

    def fill(model):
        target = os.path.join(model, KERAS_FILE)
        with store.naming_the_source((target, source), (model, source)):
            return fill_checked(model, target)

    def fill_checked(model, target):
        store.copy_regular_file(folder, file, target)  # refuses a link
        loaded = _load_keras_file(target)
        try:
            shape = tuple(loaded.input_shape)
        except (AttributeError, TypeError, ValueError, RuntimeError):
            shape = ()  # a model without one defined input (subclassed, never built)
        if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
            raise EncoderStoreError(f"{source}: the model's input is {shape[1:]}; lookalike "
                                    "embeds square RGB images, (S, S, 3)")
        size = _check_size(image_size or shape[1], source)
        if shape[1] is not None and int(shape[1]) != size:
            raise EncoderStoreError(f"{source}: the model takes {shape[1]} px images; "
                                    f"{image_size} px was asked for")
        tf = frameworks.tensorflow()
        manifest = dict(
            name=name, kind=KERAS, framework="tensorflow", framework_version=tf.__version__,
            architecture=dict(file=KERAS_FILE, input_shape=list(shape[1:])), image_size=size,
            preprocessing=_preprocessing("NHWC", normalize), metric="cosine",
            imported_from=source, imported_at=store.now_iso(),
            training_data=dict(dataset=None, imported_from=source))
        return _publish_checked(model, manifest, [KERAS_FILE], name, store_dir, overwrite)

    return store.ImportResult(_staged_import(name, store_dir, overwrite, fill))


def detect_format(path):
    """What ``path`` holds: "lookalike" (a folder with our manifest), "paddle-inference"
    (a folder with an export) or "keras" (a ``.keras`` file); EncoderStoreError otherwise."""
    source = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(source):
        raise EncoderStoreError(f"{source}: no such model directory or file")
    if os.path.isfile(source) and source.endswith(".keras"):
        return KERAS
    if os.path.isdir(source):
        if os.path.isfile(os.path.join(source, store.MANIFEST)):
            return "lookalike"
        if any(n.endswith(".pdiparams") for n in os.listdir(source)):
            return PADDLE_INFERENCE
    raise EncoderStoreError(
        f"{source}: not a lookalike encoder (no {store.MANIFEST}), nor a Paddle Inference "
        "export folder (*.pdiparams) or a .keras file")


def import_foreign(path, name, kind, image_size=None, normalization=None, output=None,
                   store_dir=None, overwrite=False):
    """:func:`import_paddle_inference` or :func:`import_keras` by ``kind``, with the
    normalisation named ``normalization`` (:data:`NORMALIZATIONS`; default the kind's)."""
    preset = normalization or DEFAULT_NORMALIZATION[kind]
    if preset not in NORMALIZATIONS:
        raise EncoderStoreError(f"unknown normalisation {preset!r}: choose from "
                                f"{', '.join(NORMALIZATIONS)}")
    options = dict(NORMALIZATIONS[preset], store_dir=store_dir, overwrite=overwrite)
    if kind == PADDLE_INFERENCE:
        return import_paddle_inference(path, name, image_size, output=output, **options)
    return import_keras(path, name, image_size, **options)


def _check_size(image_size, source):
    try:
        size = int(image_size)
    except (TypeError, ValueError):
        size = 0
    if not 8 <= size <= 1024:
        raise EncoderStoreError(f"{source}: give the model's input size in pixels (8-1024), "
                                f"got {image_size!r}")
    return size
