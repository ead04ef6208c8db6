"""PyTorch reference models (transformers' LlamaForCausalLM) for numerical tests of srlm_jax.

`torch_reference_from_gguf` is deliberately independent of `hf_io.load_gguf`: it has its own
GGUF -> Hugging Face name map and its own (index-based) undoing of llama.cpp's q/k row order,
so agreement between the two is evidence that both are right.
"""

import functools
import os
import tempfile

import numpy as np
import torch
import transformers

from srlm_jax import hf_io

_GGUF_TO_HF = {
    'attn_norm': 'input_layernorm', 'ffn_norm': 'post_attention_layernorm',
    'attn_q': 'self_attn.q_proj', 'attn_k': 'self_attn.k_proj', 'attn_v': 'self_attn.v_proj',
    'attn_output': 'self_attn.o_proj', 'ffn_gate': 'mlp.gate_proj', 'ffn_up': 'mlp.up_proj',
    'ffn_down': 'mlp.down_proj',
}


def torch_logits(model, tokens, mask=None, positions=None) -> np.ndarray:
  """Returns float32 logits [B, T, V] of a torch causal LM (positions count real tokens)."""
  tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
  mask = torch.ones_like(tokens) if mask is None else torch.as_tensor(np.asarray(mask)).long()
  if positions is None:
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
  positions = torch.as_tensor(np.asarray(positions), dtype=torch.long)
  with torch.no_grad():
    out = model(input_ids=tokens, attention_mask=mask, position_ids=positions)
  return out.logits.float().numpy()


def torch_llama_from_params(config, params) -> transformers.LlamaForCausalLM:
  """Returns a float32 transformers LlamaForCausalLM holding params (via hf_io.export_hf)."""
  with tempfile.TemporaryDirectory() as out:
    hf_io.export_hf(config, params, out, dtype='float32')
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  return model.eval()


def _unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  # llama.cpp stores HF row h*Dh + p*Dh/2 + j (p = half, j = pair) at GGUF row h*Dh + 2*j + p.
  dh = w.shape[0] // n_heads
  h, p, j = np.meshgrid(np.arange(n_heads), np.arange(2), np.arange(dh // 2), indexing='ij')
  return w[(h * dh + 2 * j + p).reshape(-1)]


def torch_reference_from_gguf(path: str) -> transformers.LlamaForCausalLM:
  """Returns a plain float32 LlamaForCausalLM with the dequantised weights of a llama GGUF."""
  import gguf  # pylint: disable=g-import-not-at-top
  reader = gguf.GGUFReader(path)
  meta = {k: f.contents() for k, f in reader.fields.items() if k.startswith('llama.')}
  n_heads = meta['llama.attention.head_count']
  n_kv = meta.get('llama.attention.head_count_kv', n_heads)
  state = {}
  for t in reader.tensors:
    w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
    w = w.reshape([int(d) for d in reversed(t.shape)])
    parts = t.name.split('.')
    if parts[0] == 'blk':
      kind = parts[2]
      if kind == 'attn_q':
        w = _unpermute_rows(w, n_heads)
      elif kind == 'attn_k':
        w = _unpermute_rows(w, n_kv)
      name = f'model.layers.{parts[1]}.{_GGUF_TO_HF[kind]}.weight'
    else:
      name = {'token_embd.weight': 'model.embed_tokens.weight', 'output_norm.weight':
              'model.norm.weight', 'output.weight': 'lm_head.weight'}[t.name]
    state[name] = torch.from_numpy(w.copy())
  tied = 'lm_head.weight' not in state
  config = transformers.LlamaConfig(
      vocab_size=state['model.embed_tokens.weight'].shape[0],
      hidden_size=meta['llama.embedding_length'],
      intermediate_size=meta['llama.feed_forward_length'],
      num_hidden_layers=meta['llama.block_count'], num_attention_heads=n_heads,
      num_key_value_heads=n_kv, rms_norm_eps=meta['llama.attention.layer_norm_rms_epsilon'],
      max_position_embeddings=meta['llama.context_length'], tie_word_embeddings=tied,
      rope_parameters={'rope_type': 'default', 'rope_theta': meta['llama.rope.freq_base']})
  model = transformers.LlamaForCausalLM(config).float()
  if tied:
    state['lm_head.weight'] = state['model.embed_tokens.weight']
  model.load_state_dict(state, strict=True)
  return model.eval()


@functools.lru_cache(maxsize=None)
def torch_smollm2() -> transformers.LlamaForCausalLM:
  """Returns the (cached) float32 torch reference of the SmolLM2-135M-Instruct GGUF."""
  return torch_reference_from_gguf(hf_io.smollm2_gguf_path())


@functools.lru_cache(maxsize=None)
def smollm2_hf_tokenizer():
  """Returns the (cached) transformers tokenizer of SmolLM2, with its chat template."""
  path = hf_io.smollm2_gguf_path()
  return transformers.AutoTokenizer.from_pretrained(os.path.dirname(path),
                                                    gguf_file=os.path.basename(path))
