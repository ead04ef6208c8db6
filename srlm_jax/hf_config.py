"""A Hugging Face Llama config.json dict <-> `llama.LlamaConfig`.

`config_from_hf` accepts what transformers' LlamaForCausalLM accepts and the decoder implements
(no biases, no sliding window, no partial rotary, rope 'default', 'linear' or 'llama3'); any
other value is an error naming the field. `config_to_hf` writes both rope spellings, so
transformers 4.x and 5.x read the result.
"""

from srlm_jax import llama

_ROPE_KINDS = ('default', 'linear', 'llama3')


def config_from_hf(hf_config: dict, *, source: str = '') -> llama.LlamaConfig:
  """Returns the LlamaConfig of a Hugging Face config.json dict (Llama architecture only)."""
  where = source or 'config.json'

  def bad(field, value, why):
    raise ValueError(f'{where}: {field}={value!r}: {why}')

  archs = hf_config.get('architectures') or []
  if archs and 'LlamaForCausalLM' not in archs:
    bad('architectures', archs, 'only LlamaForCausalLM is supported')
  if not archs and hf_config.get('model_type') != 'llama':
    bad('model_type', hf_config.get('model_type'), "only 'llama' is supported")
  for field in ('attention_bias', 'mlp_bias', 'qkv_bias', 'bias'):
    if hf_config.get(field):
      bad(field, hf_config[field], 'biases are not supported')
  window = hf_config.get('sliding_window')
  context = hf_config.get('max_position_embeddings', 4096)
  if window is not None and window < context and hf_config.get('use_sliding_window') is not False:
    bad('sliding_window', window, f'sliding-window attention (narrower than the {context}-token '
        'context) is not implemented; every layer attends to the whole context')
  if (hf_config.get('pretraining_tp') or 1) > 1:
    bad('pretraining_tp', hf_config['pretraining_tp'], 'only 1 is supported')
  heads, kv_heads = hf_config['num_attention_heads'], hf_config.get('num_key_value_heads')
  if kv_heads and heads % kv_heads:
    bad('num_key_value_heads', kv_heads, f'must divide num_attention_heads={heads}')
  head_dim = hf_config.get('head_dim') or hf_config['hidden_size'] // heads
  if head_dim % 2 or (not hf_config.get('head_dim') and hf_config['hidden_size'] % heads):
    bad('head_dim', head_dim, f'must be even, and hidden_size={hf_config["hidden_size"]} must '
        f'divide by num_attention_heads={heads} when head_dim is not given')
  if hf_config.get('hidden_act', 'silu') != 'silu':
    bad('hidden_act', hf_config['hidden_act'], "only 'silu' is supported")
  # transformers 5 writes `rope_parameters` (with rope_theta inside); 4.x `rope_scaling`.
  rope_field = 'rope_parameters' if hf_config.get('rope_parameters') else 'rope_scaling'
  rope = dict(hf_config.get(rope_field) or {})
  kind = rope.get('rope_type', rope.get('type', 'default'))
  if kind not in _ROPE_KINDS:
    bad(f'{rope_field}.rope_type', kind, f'supported: {", ".join(_ROPE_KINDS)}')
  for field, value in (('partial_rotary_factor', hf_config.get('partial_rotary_factor')),
                       (f'{rope_field}.partial_rotary_factor', rope.get('partial_rotary_factor'))):
    if value is not None and float(value) != 1.0:
      bad(field, value, 'partial rotary embeddings are not implemented (only 1.0)')
  scaling = None
  if kind != 'default':
    fields = {'factor': float(rope['factor'])}
    if kind == 'llama3':
      fields.update({k: type(getattr(llama.RopeScaling, k))(rope[k]) for k in (
          'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings')})
    scaling = llama.RopeScaling(kind=kind, **fields)
  n_heads = hf_config['num_attention_heads']
  return llama.LlamaConfig(
      vocab_size=hf_config['vocab_size'], dim=hf_config['hidden_size'],
      n_layers=hf_config['num_hidden_layers'], n_heads=n_heads,
      n_kv_heads=hf_config.get('num_key_value_heads') or n_heads,
      ffn_dim=hf_config['intermediate_size'],
      head_dim=hf_config.get('head_dim') or hf_config['hidden_size'] // n_heads,
      norm_eps=float(hf_config.get('rms_norm_eps', 1e-6)),
      rope_theta=float(rope.get('rope_theta', hf_config.get('rope_theta', 10000.0))),
      rope_scaling=scaling, tie_embeddings=bool(hf_config.get('tie_word_embeddings', False)),
      max_seq_len=hf_config.get('max_position_embeddings', 4096))


def config_to_hf(config: llama.LlamaConfig) -> dict:
  """Returns a transformers LlamaForCausalLM config.json dict for config."""
  rope = {'rope_type': 'default', 'rope_theta': config.rope_theta}
  s = config.rope_scaling
  if s is not None:
    rope.update(rope_type=s.kind, factor=s.factor)
    if s.kind == 'llama3':
      rope.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                  original_max_position_embeddings=s.original_max_position_embeddings)
  return {
      'architectures': ['LlamaForCausalLM'], 'model_type': 'llama',
      'vocab_size': config.vocab_size, 'hidden_size': config.dim,
      'intermediate_size': config.ffn_dim, 'num_hidden_layers': config.n_layers,
      'num_attention_heads': config.n_heads, 'num_key_value_heads': config.n_kv_heads,
      'head_dim': config.head_dim, 'hidden_act': 'silu', 'rms_norm_eps': config.norm_eps,
      'max_position_embeddings': config.max_seq_len, 'tie_word_embeddings': config.tie_embeddings,
      'attention_bias': False, 'mlp_bias': False, 'dtype': config.param_dtype,
      # Both spellings, so transformers 4.x (rope_theta / rope_scaling) and 5.x read it.
      'rope_parameters': rope, 'rope_theta': config.rope_theta,
      'rope_scaling': None if s is None else {k: v for k, v in rope.items() if k != 'rope_theta'},
  }
