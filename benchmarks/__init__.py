"""How close the stream runs to the model's own speed (docs/benchmarks.md).

`python -m benchmarks prepare --out DIR` writes the inputs (held-out reviews, Fashion-MNIST test images
as PNG); `python -m benchmarks run` measures, in one run on one machine, the model in-process, Triton
alone, the whole stream (micro-batched) and the naive stream (one event per request), and writes a JSON
result, a markdown table and a plot. The run path imports only what a bare GPU machine has: no pandas,
pyarrow or scikit-learn.
"""
