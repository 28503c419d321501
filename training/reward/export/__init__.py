"""Export a trained reward model as a verified bundle: ONNX graph, gate, static int8 quantiser.

    from training.reward.export import ExportConfig, export_bundle
    export_bundle(ExportConfig(run_dir="runs/rm", out="bundles/rm-v1"))

`build` drives the steps; `onnx_graph` traces the graph, `gate` decides whether it may ship,
`quantize` makes the int8 graph. Nothing here is imported by the service.
"""

from training.reward.export.build import ExportConfig, export_bundle

__all__ = ["ExportConfig", "export_bundle"]
