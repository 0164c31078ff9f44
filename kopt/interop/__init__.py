"""Bridges to other libraries, each imported on its own so that kopt never needs them.

- `kopt.interop.keras`: `wrap(opt)` makes a kopt optimizer a `keras.optimizers.Optimizer`
  for `model.compile(...)` / `model.fit(...)` (Keras 3, JAX backend).
- `kopt.interop.flax`: `variables(model)` for the stateful facade and `transform(tx)` for
  `nnx.Optimizer` (flax.nnx).

optax needs no bridge: kopt transforms are optax-compatible `(init, update)` pairs, and
`kopt.optimizers.Optimizer.from_transform(tx)` puts any of them in the stateful facade.
"""

__all__: list[str] = []
