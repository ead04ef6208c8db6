r"""DPO on preference pairs (AI Feedback Training: M_t -> M_{t+1}, M_t the frozen reference).

  python launch/dpo.py --config=configs/dpo.py --workdir=/tmp/srlm/dpo \
      --config.model=/tmp/srlm/m1_hf --config.train_data=/tmp/srlm/pairs.jsonl

  python launch/dpo.py --config=configs/dpo.py:ipo ...   # a variant (see VARIANTS)

Data: JSONL, one pair a line, `{"prompt": ..., "chosen": ..., "rejected": ...}`.
Defaults follow the paper's DPO (lr 1e-6 decaying to 1e-7, batch 16, beta 0.1).
"""

import ml_collections

# Named variants for `configs/dpo.py:<name>`: the loss and its options.
VARIANTS = {
    '': {},
    'dpo': {},
    'ipo': {'loss': 'ipo'},
    'rpo': {'loss': 'rpo', 'loss_options': {'nll_weight': 1.0}},  # Iterative RPO: DPO + NLL
    'simpo': {'loss': 'simpo', 'reference': 'none', 'beta': 2.0,
              'loss_options': {'gamma': 0.5}},  # reference-free
}


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the DPO config; `arg` picks a variant from VARIANTS."""
  c = ml_collections.ConfigDict()
  c.model = 'smollm2-135m-instruct'  # srlm_jax.load path of the policy (and the reference)
  c.init_params = ''  # optional orbax params dir (e.g. the SFT stage's workdir/params)
  c.ref_model = ''  # reference model path; '' (and no ref_params) means the starting policy
  c.ref_params = ''  # reference as an orbax params dir (takes precedence over ref_model)
  # JSONL of preference pairs (required, unless run_dpo is given a dataset: the loop's dpo stage)
  c.train_data = ''
  c.eval_data = ''  # optional held-out pairs; reward accuracy logged every eval_every steps
  c.chat_template = True  # wrap prompts in the tokenizer's chat template (False: raw text)
  c.max_len = 512  # tokens per sequence (prompt + response); longer responses are truncated
  c.seed = 0  # root of all randomness: data order and the step rngs

  # objectives.get(name): sigmoid (DPO) | ipo | hinge | robust | rpo | simpo | sft, or one you
  # register (srlm_jax/objectives)
  c.loss = 'sigmoid'
  c.beta = 0.1  # KL strength of the implicit reward
  c.loss_options = ml_collections.ConfigDict()  # extra keyword options of the loss
  c.loss_options.label_smoothing = 0.0  # conservative DPO: assumed label-flip probability
  # 'precomputed': ref log-probs once per dataset (one model in memory); 'online': a frozen
  # ref params tree scored with each batch; 'none': zeros (reference-free losses such as simpo)
  c.reference = 'precomputed'

  c.batch_size = 16  # preference pairs per optimizer step (all micro-batches together)
  c.grad_accum = 1  # micro-batches per step, accumulated in-step by lax.scan
  c.num_epochs = 1.0  # passes over train_data; used when num_steps == 0
  c.num_steps = 0  # optimizer steps; 0 means num_epochs * len(train_data) / batch_size

  c.lr = 1e-6  # peak learning rate, reached after warmup_steps
  c.end_lr = 1e-7  # learning rate at the last step
  c.warmup_steps = 0  # linear warmup from lr / warmup_steps to lr
  c.schedule = 'linear'  # decay after warmup: 'cosine' | 'linear' | 'constant'
  c.b1 = 0.9  # AdamW first-moment decay
  c.b2 = 0.95  # AdamW second-moment decay
  c.eps = 1e-8  # AdamW epsilon
  c.weight_decay = 0.0  # decoupled weight decay (not applied to norm scales)
  c.clip_norm = 1.0  # global gradient-norm clipping; 0 disables it

  c.dtype = 'bfloat16'  # compute dtype 'float32' | 'bfloat16'; params stay float32 (master)
  c.remat = False  # recompute each layer in the backward pass to save activation memory
  # layers compiled as straight-line code, not a loop: about 15% faster steps (CPU), 3.6x the
  # compile time; False suits runs of a few steps
  c.unroll_layers = True
  # the output head (and its gradient) only at the target tokens, not prompts and padding:
  # the same numbers with less compute, one compile per eighth of target count per length
  c.head_at_loss_positions = True
  c.mesh = (1, -1, 1)  # (data, fsdp, tensor) mesh shape; -1 takes the remaining devices
  c.distributed = False  # call jax.distributed.initialize() first (multi-host runs)

  c.log_every = 10  # steps between metrics.jsonl / TensorBoard writes
  c.eval_every = 200  # steps between held-out evaluations (when eval_data is set)
  c.checkpoint_every = 200  # steps between orbax checkpoints (and at the last step)
  c.keep = 3  # checkpoints kept on disk
  # checkpoints kept once the run is complete (the final ones): its params/ export holds the
  # final weights, so the loop keeps this many after the stage's DONE (0: none, the optimizer
  # state of a finished stage is never needed); a standalone run keeps at least the final one,
  # so that running it again finds it finished
  c.keep_after_done = 0
  c.export_params = True  # write the final params to workdir/params for the next stage

  if arg not in VARIANTS:
    raise ValueError(f'unknown dpo variant {arg!r}; expected one of {sorted(VARIANTS)}')
  for key, value in VARIANTS[arg].items():
    if isinstance(value, dict):
      c[key].update(value)
    else:
      c[key] = value
  return c
