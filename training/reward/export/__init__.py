"""Export a trained reward model as a verified bundle: ONNX graph, gate, static int8 quantiser.

    from training.reward.export import ExportConfig, export_bundle
    export_bundle("runs/rm", "bundles/rm-v1", ExportConfig(version="2"))

`build` drives the steps; `onnx_graph` traces the graph, `gate` decides whether it may ship,
`quantize` makes the int8 graph, `config` holds the knobs. Nothing here is imported by the service.
`export_bundle` (torch, onnxruntime) is imported on first use, so the CLI can read `ExportConfig`
without them and `rlhf --help` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from training.reward.export.config import ExportConfig

if TYPE_CHECKING:
    from training.reward.export.build import export_bundle

__all__ = ["ExportConfig", "export_bundle"]


def __getattr__(name: str) -> Any:
    if name == "export_bundle":
        from training.reward.export.build import export_bundle

        return export_bundle
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
