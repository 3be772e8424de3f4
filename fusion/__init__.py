"""The text + image fusion model of ecom-enrichment (see docs/model.md).

- `fusion.taxonomy`: the leaf categories, departments, and how each data source maps onto them.
- `fusion.preprocess`: input validation and preprocessing shared by training, serving and the service
  (`validate_request`, `validate_image`, `decode_text`, `review_text`, `InputLimits`).
- `fusion.errors`: `BadInput` and its subclasses (never retriable), `ModelNotReady` (retriable).
- `fusion.network`: the network, saving/loading the fine-tuned tensors, `Predictor`.
- `fusion.serving`: request handling behind Triton's `model.py`.
- `fusion.train`: the training pipeline (`python -m fusion.train`); `fusion.bench_model`: the benchmark.
"""
