"""srlm_jax: Self-Rewarding Language Models in JAX."""

import setuptools

setuptools.setup(
    name='srlm_jax',
    version='0.1.0',
    description='Self-Rewarding Language Models in JAX: sample, self-judge, DPO, repeat.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['srlm_jax', 'srlm_jax.*']),
    package_data={'srlm_jax': ['data/*.jsonl', 'data/*.md']},
    python_requires='>=3.10',
    # Ranges that hold both on CPU machines (Python 3.11, jax 0.10) and on the GPU image
    # (Python 3.12, jax 0.11 with its own flax/optax/orbax/transformers).
    install_requires=[
        'jax>=0.10,<0.12',
        'flax>=0.10',
        'optax>=0.2.4',
        'orbax-checkpoint>=0.11',
        'numpy>=1.26',
        'transformers>=4.51,<6',
        'tokenizers>=0.21',
        'jinja2>=3.1',  # chat templates (transformers renders them but does not require it)
        'sentencepiece>=0.2',
        'safetensors>=0.4',
        'gguf>=0.10',
        'ml-collections>=0.1.1',
        'absl-py>=1.4',
        'tqdm>=4.66',
        'matplotlib>=3.7',  # the loop's report plots
        # The OASST builders as TFDS datasets read through `as_data_source` (array_record files,
        # no TensorFlow).
        'tensorflow-datasets>=4.9',
        'array_record>=0.5',
        'importlib_resources',
    ],
    extras_require={
        # jax for accelerators (the plain install is jax's CPU build): `pip install -e ".[cuda]"`.
        'cuda': ['jax[cuda12]>=0.10,<0.12'],  # NVIDIA GPUs, CUDA 12 wheels from PyPI
        'cuda13': ['jax[cuda13]>=0.10,<0.12'],  # NVIDIA GPUs with a CUDA 13 driver
        'tpu': ['jax[tpu]>=0.10,<0.12'],  # Cloud TPU VMs
        'tensorboard': ['tensorboardX>=2.6'],  # metrics as TensorBoard event files
        'wandb': ['wandb>=0.17'],  # metrics to Weights & Biases, when asked for
        # The review page's browser test drives Debian's chromium (apt-get install chromium
        # chromium-driver) with selenium; the page itself needs only the standard library.
        'review': ['selenium>=4.20'],
        # transformers' PyTorch Llama is the numerical reference; torch 2.13.0 is the CPU build
        # already on disk on the project's machines.
        'test': [
            'pytest>=8',
            'pytest-xdist>=3.5',  # the suite runs in two workers, one test file each at a time
            'pytest-timeout>=2.3',  # a hung test fails with its stack (pytest.ini), not CI's limit
            'hypothesis>=6.100',
            'torch==2.13.0',
            'accelerate>=1.0',
            'scipy>=1.11',
            'trl>=1.0',  # TRL's DPO losses and DPOTrainer are the references for ours
            'tensorboardX>=2.6',  # as in [tensorboard], so the tests cover the metrics writer
            'nbclient>=0.9',  # tests/test_colabs.py runs the colabs/ notebooks in a kernel
            'nbformat>=5.9',
            'ipykernel>=6.29',
            'selenium>=4.20',  # tests/test_review_browser.py (as in [review])
        ],
    },
)
