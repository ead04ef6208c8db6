r"""Exports a model (a model directory the loop wrote, or any model srlm_jax.load reads) as a
Hugging Face directory: sharded safetensors, config.json and the tokenizer.

  python launch/export.py --model=/tmp/srlm_demo/iter_1/dpo/params --out=/tmp/m2_hf
  python -c "import transformers; transformers.AutoModelForCausalLM.from_pretrained('/tmp/m2_hf')"

Files of at most --max_shard_mb each (model-0000i-of-0000n.safetensors with
model.safetensors.index.json; one model.safetensors when it fits). Multi-host
(--coordinator_address, --num_processes, --process_id): every process runs this command; the
params load sharded over the mesh and each process writes its own share of the files, one
tensor gathered at a time (srlm_jax.hf_io.export_hf_sharded).
"""

from absl import app
from absl import flags
import jax

import srlm_jax
from srlm_jax import console
from srlm_jax import distributed
from srlm_jax import hf_io
from srlm_jax import sharding

_MODEL = flags.DEFINE_string('model', None, 'A model directory, Hugging Face directory, .gguf '
                             'file or smollm2-135m-instruct.', required=True)
_OUT = flags.DEFINE_string('out', None, 'The Hugging Face directory to write.', required=True)
_MAX_SHARD_MB = flags.DEFINE_float('max_shard_mb', 2048, 'Largest safetensors file (MiB).')
_DTYPE = flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16', 'float16'],
                           'Tensor dtype in the files (default: the params\').')
_MESH = flags.DEFINE_list('mesh', ['1', '-1', '1'], '(data, fsdp, tensor) mesh the params load '
                          'onto; -1 takes the remaining devices.')
_DISTRIBUTED = distributed.define_flags()


def main(argv):
  del argv
  console.quiet_third_party()
  _DISTRIBUTED(False)  # or with --coordinator_address
  mesh = sharding.make_mesh(*[int(x) for x in _MESH.value])
  model = srlm_jax.load(_MODEL.value, mesh=mesh)
  out = hf_io.export_hf_sharded(model.config, model.params, _OUT.value,
                                max_shard_bytes=int(_MAX_SHARD_MB.value * 2**20),
                                dtype=_DTYPE.value, tokenizer=model.tokenizer)
  files = sorted(set(out['weight_map'].values()))
  print(f'process {jax.process_index()} wrote {len(out["written"])} of the {len(files)} files '
        f'({", ".join(out["written"])}); {len(out["weight_map"])} tensors in {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
