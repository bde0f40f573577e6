"""ONNX models run by onnxruntime (the optional extra `pip install 'magnet-cli[onnx]'`): the CUDA execution
provider when it is installed and the device is CUDA, the CPU one otherwise. The graph's input shape says
the channel count, a fixed batch (a batch-1 model gets one window at a time) and a fixed window size;
symbolic dimensions are dynamic. Reading an ONNX file runs no Python: the graph is data, run by
onnxruntime's own kernels. Tensors cross as numpy arrays (through host memory on CUDA)."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from magnet_cli.errors import ModelError
from magnet_cli.models.segmenter import LOGITS, PROBABILITIES, Segmenter
from magnet_cli.models.sources import file_digest, require_file

if TYPE_CHECKING:
    from magnet_cli.models.bundle import SegmenterSpec
    from magnet_cli.models.sources import Contract

INSTALL = "pip install 'magnet-cli[onnx]'"


def runtime() -> Any:
    """onnxruntime, or one line saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(f"ONNX segmenters need onnxruntime and onnx: {INSTALL}") from None
    return onnxruntime


@dataclass
class OnnxSegmenter(Segmenter):
    """An ONNX graph behind the segmenter interface; `module` is None (nothing to train or script)."""

    session: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def to(self, device: torch.device | str, *, channels_last: bool = False) -> "OnnxSegmenter":
        device = torch.device(device)
        if self.session is None or device != self.device:
            self.session, self.device = open_session(self.path, device), device  # type: ignore[arg-type]
        return self

    def run(self, images: torch.Tensor) -> torch.Tensor:
        if self.session is None:
            self.to(self.device)
        feed = {self.session.get_inputs()[0].name: images.detach().float().cpu().contiguous().numpy()}
        out = self.session.run([self.session.get_outputs()[0].name], feed)[0]
        return torch.from_numpy(out).to(images.device)

    def digest(self) -> str:
        return digest_file(self.path)  # type: ignore[arg-type]


def providers(device: torch.device) -> list:
    """onnxruntime's providers for `device`: CUDA (then CPU for what CUDA lacks) on a CUDA device where the
    CUDA provider is installed, else the CPU alone."""
    if device.type == "cuda" and "CUDAExecutionProvider" in runtime().get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def open_session(path: Path, device: torch.device) -> Any:
    ort = runtime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same thread budget torch was given
    # Idle onnxruntime threads otherwise spin for a while after each call, taking the cores from the
    # torch refiner that runs next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers(device))
    except Exception as error:  # onnxruntime raises its own types for foreign or unsupported graphs
        raise ModelError(f"{path}: onnxruntime cannot run this model ({str(error).splitlines()[0]})") from None


def load(spec: "SegmenterSpec", directory: Path | None, contract: "Contract", *, named_by: str | None = None) -> Segmenter:
    path = require_file((directory or Path()) / spec.onnx, "ONNX model")  # type: ignore[operator]
    session = open_session(path, torch.device("cpu"))
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise ModelError(f"{path}: a segmenter takes one image batch (N, C, h, w); this graph takes "
                         f"{', '.join(f'{i.name} {i.shape}' for i in inputs)}")
    dims = [d if isinstance(d, int) and d > 0 else None for d in inputs[0].shape]
    if dims[1] is None:
        raise ModelError(f"{path}: the channel count must be fixed in the graph, got {inputs[0].shape}")
    size = (dims[2], dims[3]) if dims[2] is not None and dims[3] is not None else (0, 0)
    return OnnxSegmenter(None, contract.num_classes or 0, size, input_channels=dims[1], outputs=output_kind(path),
                         fixed_batch=dims[0], path=path, session=session)  # type: ignore[arg-type]


def graph(path: Path) -> Any:
    """The ONNX graph without its external weights (onnx, not onnxruntime, reads the structure)."""
    try:
        import onnx
    except ImportError:
        raise ModelError(f"ONNX segmenters need onnxruntime and onnx: {INSTALL}") from None
    return onnx.load(str(path), load_external_data=False).graph


def external_files(path: Path) -> list[str]:
    """The external data files the model's weights live in (torch.onnx.export writes `NAME.onnx.data`
    beside the model), relative to its folder; onnxruntime refuses ones outside it."""
    names = {entry.value for tensor in graph(path).initializer for entry in tensor.external_data if entry.key == "location"}
    return sorted(names)


def input_channels(path: Path) -> int | None:
    """The channel axis of the graph's one 4-D input, from the graph alone; None if not fixed there."""
    inputs = graph(path).input
    dims = inputs[0].type.tensor_type.shape.dim if len(inputs) == 1 else []
    return dims[1].dim_value or None if len(dims) == 4 else None


def digest_file(path: Path) -> str:
    """sha256 over the model file and its external data files, in order."""
    digest = hashlib.sha256()
    for part in [path, *(path.parent / name for name in external_files(path))]:
        digest.update(bytes.fromhex(file_digest(part)))
    return digest.hexdigest()


def output_kind(path: Path) -> str:
    """"probabilities" where the graph's output comes from a Softmax over classes (axis 1), else "logits"."""
    graph_ = graph(path)
    name = graph_.output[0].name
    producer = next((node for node in graph_.node if name in node.output), None)
    while producer is not None and producer.op_type in ("Identity", "Cast"):  # exporters add these at the end
        producer = next((node for node in graph_.node if producer.input[0] in node.output), None)
    if producer is not None and producer.op_type == "Softmax":
        axis = next((a.i for a in producer.attribute if a.name == "axis"), -1)
        if axis in (1, -3):
            return PROBABILITIES
    return LOGITS


def save(segmenter: Segmenter, directory: Path, spec: "SegmenterSpec") -> None:
    """Copy the ONNX file the segmenter was read from, with its external data files; export its module
    where it came from elsewhere."""
    target = directory / spec.onnx  # type: ignore[operator]
    if isinstance(segmenter, OnnxSegmenter):
        source = segmenter.path
        if source.resolve() != target.resolve():  # type: ignore[union-attr]
            for name in external_files(source):  # type: ignore[arg-type]
                (target.parent / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source.parent / name, target.parent / name)  # type: ignore[union-attr]
            shutil.copyfile(source, target)  # type: ignore[arg-type]
    else:
        export_onnx(segmenter.module, target, segmenter.input_size, segmenter.input_channels)  # type: ignore[arg-type]


def export_onnx(module: nn.Module, path: Path, input_size: tuple[int, int], channels: int = 3, *, batch: int | None = None) -> Path:
    """`module` as ONNX by torch.onnx.export: any batch of (channels, *input_size) windows, or a fixed `batch`."""
    example = torch.zeros(batch or 2, channels, *input_size)
    dynamic = None if batch is not None else ({0: "batch"},)
    torch.onnx.export(module.cpu().eval(), (example,), str(path), input_names=["images"], output_names=["scores"],
                      dynamic_shapes=dynamic, verbose=False)
    return Path(path)
