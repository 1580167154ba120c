"""Everything MergeBench asks of the Hugging Face Hub, through ``huggingface_hub`` only.

- :mod:`~mergebench.hub.refs`: parse every reference the project accepts and pin it to a commit sha once;
- :mod:`~mergebench.hub.models`: a pinned model's file list, safetensors headers and config (no weights);
- :mod:`~mergebench.hub.push`: the one way results reach the Hub (create the repo, one commit);
- :mod:`~mergebench.hub.eval_results`: scores in a model repo (``.eval_results/*.yaml``, ``model-index``),
  written in one commit on top of the scored weights, and read back at one revision;
- :mod:`~mergebench.hub.retry`: transient failures retried with back-off;
- :mod:`~mergebench.hub.endpoint`: point the client at another Hub (the loopback server, a mirror).

Weights themselves are streamed by :mod:`mergebench.stream.sources` (HTTP Range requests on the pinned
resolve URLs); datasets are read by ``datasets`` at the pinned revisions this package resolved.
"""
