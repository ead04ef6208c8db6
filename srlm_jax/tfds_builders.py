"""The OASST seed and evaluation sets of srlm_jax.data as TensorFlow Datasets builders.

TFDS builds and reads these without TensorFlow: files are written as array_record and read
with `as_data_source()` (random access, numpy values, text as bytes). It needs
`tensorflow-datasets`, `importlib_resources` and `array_record` installed; the builder class
lives here (an importable module), not in `__main__`, as TFDS requires.

  from srlm_jax import tfds_builders
  tfds_builders.build_all('/tmp/tfds', oasst1=..., oasst2_ranked=..., oasst2_quality=...)
  pairs = tfds_builders.load('human_pairs', '/tmp/tfds', oasst1=...)['validation']
  pairs[0]['chosen'].decode()
  tfds_builders.records('ift', 'train', '/tmp/tfds')  # a built split as plain dicts

The loop and the evaluation read a built split through a data source string
`tfds:<config>/<split>@<data_dir>` (srlm_jax.data.read_source), wherever they take JSONL.

Configs (the records are exactly those of srlm_jax.data, see there):
  ift          split 'train'       {id, prompt, response}
  eft_train    split 'train'       {id, prompt, response, judgment, score}
  eft_eval     split 'validation'  {id, prompt, responses: {id, response, rank, score}}
  human_pairs  split 'validation'  {id, prompt_id, prompt, chosen, rejected, chosen_id,
                                    rejected_id, chosen_rank, rejected_rank}
  eft_train_model  split 'train'   {id, prompt, response, judgment, score, human_score}: the
                                    kept model-written EFT examples (srlm_jax/eft.py), packaged
                                    from the JSONL launch/build_data.py --eft_source=model
                                    writes (source `eft_model`; built only when given)
The source paths are builder arguments, not part of the dataset's identity: build different
sources into different data_dirs.
"""

from typing import Optional

import numpy as np
import tensorflow_datasets as tfds

from srlm_jax import data

_TEXT = tfds.features.Text
_SPLIT = {'ift': 'train', 'eft_train': 'train', 'eft_eval': 'validation',
          'human_pairs': 'validation', 'eft_train_model': 'train'}


def _features(name: str) -> tfds.features.FeaturesDict:
  if name == 'ift':
    spec = {'id': _TEXT(), 'prompt': _TEXT(), 'response': _TEXT()}
  elif name == 'eft_train':
    spec = {'id': _TEXT(), 'prompt': _TEXT(), 'response': _TEXT(), 'judgment': _TEXT(),
            'score': np.int32}
  elif name == 'eft_train_model':  # a model's stated scores may be decimals
    spec = {'id': _TEXT(), 'prompt': _TEXT(), 'response': _TEXT(), 'judgment': _TEXT(),
            'score': np.float32, 'human_score': np.float32}
  elif name == 'eft_eval':
    spec = {'id': _TEXT(), 'prompt': _TEXT(), 'responses': tfds.features.Sequence(
        {'id': _TEXT(), 'response': _TEXT(), 'rank': np.int32, 'score': np.int32})}
  else:
    spec = {k: _TEXT() for k in ('id', 'prompt_id', 'prompt', 'chosen', 'rejected', 'chosen_id',
                                 'rejected_id')}
    spec.update(chosen_rank=np.int32, rejected_rank=np.int32)
  return tfds.features.FeaturesDict(spec)


class OasstSrlm(tfds.core.GeneratorBasedBuilder):
  """OASST seed (IFT, EFT) and judge-evaluation (rankings, human pairs) sets from local files."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in _SPLIT]

  def __init__(self, *, oasst1: str, oasst2_ranked: Optional[str] = None,
               oasst2_quality: Optional[str] = None, eft_model: Optional[str] = None,
               **kwargs):
    self._sources = {'oasst1': oasst1, 'oasst2_ranked': oasst2_ranked,
                     'oasst2_quality': oasst2_quality, 'eft_model': eft_model}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, features=_features(self.builder_config.name), disable_shuffling=True,
        description='Open Assistant first turns for Self-Rewarding LM seed and judge data, '
                    'built by srlm_jax.data from local OASST files.')

  def _split_generators(self, dl_manager):
    del dl_manager  # local files only
    return {_SPLIT[self.builder_config.name]: self._generate_examples()}

  def _records(self) -> list:
    name, src = self.builder_config.name, self._sources
    if name == 'eft_train_model':
      if not src['eft_model']:
        raise ValueError("config 'eft_train_model' needs eft_model (the JSONL of kept "
                         'model-written EFT, launch/build_data.py --eft_source=model)')
      return [obj for _, _, obj in data.read_jsonl(src['eft_model'], allow_empty=True)]
    rankings, _ = data.eft_eval_from_trees(src['oasst1'])
    held_out = [g['prompt'] for g in rankings]
    if name == 'eft_eval':
      return rankings
    if name == 'human_pairs':
      return data.pairs_from_rankings(rankings)
    if not src['oasst2_ranked']:
      raise ValueError(f'config {name!r} needs oasst2_ranked (the flat ranked file)')
    if name == 'ift':
      return data.ift_from_ranked(src['oasst2_ranked'], held_out)[0]
    return data.eft_train(src['oasst2_ranked'], src['oasst2_quality'], held_out)[0]

  def _generate_examples(self):
    fields = set(self.info.features.keys())
    for i, record in enumerate(self._records()):
      example = {k: v for k, v in record.items() if k in fields}
      if 'responses' in example:
        example['responses'] = [{k: r[k] for k in ('id', 'response', 'rank', 'score')}
                                for r in example['responses']]
      yield f'{i:06d}', example


def builder(name: str, data_dir: str, **sources) -> OasstSrlm:
  """Returns the OasstSrlm builder of config `name` writing array_record files under data_dir."""
  return OasstSrlm(config=name, data_dir=data_dir, file_format='array_record', **sources)


def build_all(data_dir: str, **sources) -> dict:
  """Builds every config under data_dir and returns {config: {split: number of examples}}."""
  out = {}
  for name in _SPLIT:
    if name in ('ift', 'eft_train') and not sources.get('oasst2_ranked'):
      continue
    if name == 'eft_train_model' and not sources.get('eft_model'):
      continue
    if name == 'eft_train_model' and not data.read_jsonl(sources['eft_model'], allow_empty=True):
      out[name] = {'train': 0}  # nothing kept: TFDS writes no empty split
      continue
    b = builder(name, data_dir, **sources)
    b.download_and_prepare()
    out[name] = {split: info.num_examples for split, info in b.info.splits.items()}
  return out


def _plain(value, feature):
  """Returns a decoded example value as JSON-like Python: str, int, list, dict."""
  if isinstance(feature, tfds.features.Sequence):
    inner = feature.feature
    if isinstance(inner, tfds.features.FeaturesDict):  # decoded as a dict of equal-length lists
      columns = {k: [_plain(x, inner[k]) for x in v] for k, v in value.items()}
      return [dict(zip(columns, row)) for row in zip(*columns.values())]
    return [_plain(v, inner) for v in value]
  if isinstance(feature, tfds.features.FeaturesDict):
    return {k: _plain(v, feature[k]) for k, v in value.items()}
  if isinstance(value, bytes):
    return value.decode('utf-8')
  return value.item() if isinstance(value, (np.generic, np.ndarray)) else value


def records(name: str, split: str, data_dir: str) -> list[dict]:
  """Returns the examples of config `name`'s `split` built under data_dir, as plain dicts.

  Reads only what was built (nothing is rebuilt): a missing dataset or split is an error that
  names data_dir and how to build it.
  """
  if name not in _SPLIT:
    raise ValueError(f'no TFDS config {name!r} in {OasstSrlm.name} (configs: {", ".join(_SPLIT)})')
  b = builder(name, data_dir, oasst1='')  # the sources are only read when building
  if not b.is_prepared():
    raise FileNotFoundError(
        f'{data_dir}: no built TFDS dataset {OasstSrlm.name}/{name} (looked in {b.data_dir}); '
        f'build it with: python launch/build_data.py --out_dir=<jsonl dir> --tfds_dir={data_dir}')
  if split not in b.info.splits:
    raise ValueError(f'{b.data_dir}: {OasstSrlm.name}/{name} has no split {split!r} (splits: '
                     f'{", ".join(b.info.splits)})')
  source, features = b.as_data_source(split=split), b.info.features
  return [_plain(source[i], features) for i in range(len(source))]


def load(name: str, data_dir: str, **sources) -> dict:
  """Returns {split: random-access data source} of config `name`, building it if needed."""
  b = builder(name, data_dir, **sources)
  b.download_and_prepare()
  return b.as_data_source()
