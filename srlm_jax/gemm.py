"""Matrix products of activations [..., I] and weights whose weight gradient is one 2-D GEMM.

Autodiff of x @ w contracts the [B, T] axes of activations and output gradients, which XLA:CPU
lowers by transposing the activations first (strided copies fused with the elementwise
backward, slower than the matmuls themselves). Flattening the tokens to one [B*T] axis
contracts the leading axis of two row-major operands, a plain GEMM on every backend; under a
mesh the flattened axis keeps the batch sharding.
"""

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


@jax.custom_vjp
def matmul(x: Array, w: Array) -> Array:
  """Returns x [..., I] @ w [I, O]; its weight gradient is one 2-D matmul over all tokens."""
  return x @ w


def _matmul_fwd(x, w):
  return x @ w, (x, w)


def _matmul_bwd(residuals, dy):
  x, w = residuals
  dx = jax.lax.dot_general(dy, w, (((dy.ndim - 1,), (1,)), ((), ())))
  dw = jax.lax.dot_general(x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1]),
                           (((0,), (0,)), ((), ())))
  return dx.astype(x.dtype), dw.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def head_matmul(x: Array, w: Array, tied: bool) -> Array:
  """Returns float32 logits x [..., D] @ w: w is the [D, V] head, or the [V, D] embedding if tied.

  Like `matmul`, its weight gradient is one GEMM over all tokens; a tied embedding's comes out
  as [V, D] directly, with no [D, V] gradient to transpose.
  """
  return _head_product(x, w, tied)


def _head_product(x, w, tied):
  contract = ((x.ndim - 1,), (1 if tied else 0,))
  return jax.lax.dot_general(x, w.astype(x.dtype), (contract, ((), ())),
                             preferred_element_type=jnp.float32)


def _head_fwd(x, w, tied):
  return _head_product(x, w, tied), (x, w)


def _head_bwd(tied, residuals, dy):
  x, w = residuals
  dy = dy.astype(x.dtype)  # what autodiff of the mixed-precision product does too
  f32 = jnp.float32
  contract = ((dy.ndim - 1,), (0 if tied else 1,))
  dx = jax.lax.dot_general(dy, w.astype(x.dtype), (contract, ((), ())), preferred_element_type=f32)
  x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
  operands = (dy2, x2) if tied else (x2, dy2)
  dw = jax.lax.dot_general(*operands, (((0,), (0,)), ((), ())), preferred_element_type=f32)
  return dx.astype(x.dtype), dw.astype(w.dtype)


head_matmul.defvjp(_head_fwd, _head_bwd)
