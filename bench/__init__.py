"""depth2seg-bench: does monocular-depth pre-training transfer to semantic segmentation?

`bench` is the orchestration layer (manifest, matrix, executors, records, aggregation) and the
home of everything `pretrain/` and `transfer/` share (backbones, decoders, checkpoint format,
metrics, the generated world). `pretrain` and `transfer` never import each other.
"""

__version__ = "0.1.0"
