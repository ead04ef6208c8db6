r"""Supervised fine-tuning (IFT + EFT seed data -> M1), with loss on response tokens only.

  python launch/sft.py --config=configs/sft.py --workdir=/tmp/srlm/sft \
      --config.model=smollm2-135m-instruct --config.train_data=/data/ift_eft.jsonl

Data: JSONL, one example a line, `{"prompt": ..., "response": ...}` or
`{"messages": [{"role": ..., "content": ...}, ...]}` (loss on the assistant turns only).
Defaults follow the paper's SFT (lr 5.5e-6 decaying to 1.1e-6, batch 16).
"""

import ml_collections


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the SFT config; `arg` is unused (kept for `configs/sft.py:arg` variants)."""
  del arg
  c = ml_collections.ConfigDict()
  c.model = 'smollm2-135m-instruct'  # srlm_jax.load path: HF dir, .gguf file or a known name
  c.init_params = ''  # optional orbax params dir (checkpoint.save_params) replacing the weights
  c.train_data = ''  # JSONL of SFT examples (required)
  c.eval_data = ''  # optional held-out JSONL; its NLL is logged every eval_every steps
  c.chat_template = True  # wrap prompts in the tokenizer's chat template (False: raw text)
  c.max_len = 512  # tokens per example (inputs and targets); longer responses are truncated
  c.seed = 0  # root of all randomness: data order and the step rngs

  c.batch_size = 16  # examples per optimizer step (all micro-batches together)
  c.grad_accum = 1  # micro-batches per step, accumulated in-step by lax.scan
  c.num_epochs = 1.0  # passes over train_data; used when num_steps == 0
  c.num_steps = 0  # optimizer steps; 0 means num_epochs * len(train_data) / batch_size

  c.lr = 5.5e-6  # peak learning rate, reached after warmup_steps
  c.end_lr = 1.1e-6  # learning rate at the last step
  c.warmup_steps = 0  # linear warmup from lr / warmup_steps to lr
  c.schedule = 'cosine'  # decay after warmup: 'cosine' | 'linear' | 'constant'
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
  return c
