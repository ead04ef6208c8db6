"""Human review of an iteration's pairs: a sample, a local labelling page, and the labels.

  labels.py        the review sample (self-vs-frozen disagreements first), label records
                   (JSONL), their import into a run, and EFT examples built from them
  page.py          the labelling page: one self-contained HTML document (inline JS and CSS)
  server.py        serves the page and the sample on loopback only, saves each label
  label_studio.py  the sample as Label Studio tasks, and Label Studio's export read back

The run reads the labels of iteration t from <workdir>/human_labels/iter_<t>.jsonl: the guard
stage measures the self-judge against them, and iteration t + 1's EFT data includes them.
"""
