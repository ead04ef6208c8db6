"""The device mesh, the one table that lays parameters out on it, and activation constraints.

Mesh axes are fixed once for the whole codebase:
  data    pure data parallelism (params replicated across it);
  fsdp    data parallelism with params, gradients and optimizer state sharded across it;
  tensor  model parallelism (attention heads, MLP hidden units, vocabulary).
Batches are split over ('data', 'fsdp'); parameters follow `PARAM_RULES`.

A dimension that a mesh axis does not divide evenly is replicated over that axis instead (so
SmolLM2's 3 kv heads still run on tensor=2); every parameter must match a rule.
"""

import re
from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ('data', 'fsdp', 'tensor')
BATCH = ('data', 'fsdp')  # the mesh axes a batch dimension is split over

# Ordered (regex over the '/'-joined param path, spec); the first match wins. Stacked layer
# params carry a leading L axis that is never sharded.
PARAM_RULES = (
    (r'embed/embedding$', P('tensor', 'fsdp')),  # [V, D]
    (r'layers/attn/(q|k|v)_proj/kernel$', P(None, 'fsdp', 'tensor')),  # [L, D, heads*Dh]
    (r'layers/attn/o_proj/kernel$', P(None, 'tensor', 'fsdp')),  # [L, H*Dh, D]
    (r'layers/mlp/(gate|up)_proj/kernel$', P(None, 'fsdp', 'tensor')),  # [L, D, F]
    (r'layers/mlp/down_proj/kernel$', P(None, 'tensor', 'fsdp')),  # [L, F, D]
    (r'layers/(attn|mlp)_norm/scale$', P(None, None)),  # [L, D]
    (r'final_norm/scale$', P(None)),  # [D]
    (r'lm_head/kernel$', P('fsdp', 'tensor')),  # [D, V]
)

ACTIVATION = P(BATCH, None, None)  # [B, T, D]
ACTIVATION_FFN = P(BATCH, None, 'tensor')  # [B, T, F]
LOGITS = P(BATCH, None, 'tensor')  # [B, T, V]


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Optional[Sequence[Any]] = None) -> Mesh:
  """Returns a ('data', 'fsdp', 'tensor') mesh; one axis may be -1 to take the remaining devices.

  A shape with no -1 that needs fewer devices than there are uses the first ones.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = [data, fsdp, tensor]
  if shape.count(-1) > 1:
    raise ValueError(f'mesh shape {shape}: at most one axis may be -1')
  if -1 in shape:
    known = int(np.prod([s for s in shape if s != -1]))
    if len(devices) % known:
      raise ValueError(f'{len(devices)} devices do not split into mesh shape {shape}')
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) > len(devices):
    raise ValueError(f'mesh shape {dict(zip(AXES, shape))} needs {int(np.prod(shape))} devices; '
                     f'{len(devices)} are available')
  # An explicit shape smaller than the machine takes the first devices (e.g. (1, 1, 1)).
  grid = np.asarray(devices[:int(np.prod(shape))], dtype=object).reshape(shape)
  return Mesh(grid, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def path_str(path) -> str:
  """Returns a pytree key path as 'a/b/c'."""
  parts = []
  for key in path:
    parts.append(str(getattr(key, 'key', getattr(key, 'name', getattr(key, 'idx', key)))))
  return '/'.join(parts)


def unflatten_paths(flat: dict) -> dict:
  """Returns the nested dict of a flat dict whose keys are '/'-joined paths (as path_str)."""
  tree: dict = {}
  for path, leaf in flat.items():
    *parents, name = path.split('/')
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[name] = leaf
  return tree


def _axis_size(mesh, axes) -> int:
  if axes is None:
    return 1
  axes = axes if isinstance(axes, tuple) else (axes,)
  return int(np.prod([mesh.shape[a] for a in axes]))


def fit_spec(spec: P, shape: Sequence[int], mesh) -> P:
  """Returns spec with every mesh axis that does not divide its dimension dropped."""
  if len(spec) > len(shape):
    raise ValueError(f'spec {spec} has more entries than shape {tuple(shape)}')
  entries = list(spec) + [None] * (len(shape) - len(spec))
  return P(*[a if dim % _axis_size(mesh, a) == 0 else None for a, dim in zip(entries, shape)])


def param_specs(params, rules=PARAM_RULES):
  """Returns a tree of PartitionSpecs for params (arrays or ShapeDtypeStructs) from the rules."""
  def spec_for(path, leaf):
    name = path_str(path)
    for pattern, spec in rules:
      if re.search(pattern, name):
        if len(spec) != len(leaf.shape):
          raise ValueError(f'param {name} has shape {tuple(leaf.shape)} but rule {pattern!r} '
                           f'gives spec {spec} of rank {len(spec)}')
        return spec
    raise ValueError(f'param {name} (shape {tuple(leaf.shape)}) matches no sharding rule; '
                     'add one to sharding.PARAM_RULES')
  return jax.tree_util.tree_map_with_path(spec_for, params)


def param_shardings(mesh: Mesh, params, rules=PARAM_RULES):
  """Returns a tree of NamedShardings laying params out on mesh."""
  specs = param_specs(params, rules)
  return jax.tree.map(lambda s, x: NamedSharding(mesh, fit_spec(s, x.shape, mesh)), specs, params,
                      is_leaf=lambda s: isinstance(s, P))


def sharding_for(mesh: Mesh, spec: P, shape: Sequence[int]) -> NamedSharding:
  """Returns the NamedSharding of spec fitted to shape on mesh."""
  return NamedSharding(mesh, fit_spec(spec, shape, mesh))


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
  """Returns the sharding of an array whose leading dimension is the batch."""
  return sharding_for(mesh, P(BATCH), shape)


def put_global(x, sharding: NamedSharding) -> jax.Array:
  """Returns host array x (the same on every process) as a global array with `sharding`.

  Each process copies only the slices its own devices hold (in a multi-host run, its share).
  """
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def shard_batch(mesh: Optional[Mesh], *arrays):
  """Returns host arrays placed on mesh with the batch split over ('data', 'fsdp')."""
  if mesh is None:
    return arrays if len(arrays) != 1 else arrays[0]
  out = tuple(put_global(a, batch_sharding(mesh, np.shape(a))) for a in arrays)
  return out if len(out) != 1 else out[0]


def init_params(init_fn, mesh: Mesh, *args, rules=PARAM_RULES):
  """Returns init_fn(*args) created directly in its sharded layout (no full copy on a device)."""
  shapes = jax.eval_shape(init_fn, *args)
  return jax.jit(init_fn, out_shardings=param_shardings(mesh, shapes, rules))(*args)


def batch_multiple() -> int:
  """Returns how many shards a batch dimension splits into under the current mesh (1 without)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or set(mesh.axis_names) != set(AXES):
    return 1
  return _axis_size(mesh, BATCH)


def constrain(x, spec: P):
  """Returns x constrained to spec under the current mesh (`jax.set_mesh`); a no-op without one."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or set(mesh.axis_names) != set(AXES):
    return x
  return jax.lax.with_sharding_constraint(x, fit_spec(spec, x.shape, mesh))
