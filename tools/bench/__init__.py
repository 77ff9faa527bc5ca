"""minicap's benchmarks, by topic (run from a clone of the repository, at its root):

- ``python -m tools.bench``: the whole benchmark, one JSON report and a table (:mod:`tools.bench.suite`): the
  training step per backend and XLA setting and the input pipeline's share (:mod:`~tools.bench.training`),
  cached features against the frozen ViT (:mod:`~tools.bench.training`), minicap against the same model in stock
  Keras with MFU (:mod:`~tools.bench.stock`, FLOPs from :mod:`~tools.bench.flops`), decoding
  (:mod:`~tools.bench.decoding`), the input pipeline (:mod:`~tools.bench.pipeline`), the time to 95% true
  captions (:mod:`~tools.bench.faithfulness`); the device and its peak: :mod:`~tools.bench.device`;
- ``python -m tools.bench.seeds``: a profile trained with several seeds, how true each model's captions are;
- ``python -m tools.bench.attention``: minicap's attention against Keras' own.
"""