"""Streaming safetensors I/O, with no Hub or merge knowledge.

- :mod:`~mergebench.stream.format`: the safetensors layout (header parse/encode, strict layout checks);
- :mod:`~mergebench.stream.sources`: byte sources (local files, HTTP Range requests with resume);
- :mod:`~mergebench.stream.reader`: coalesced tensor reads from a source;
- :mod:`~mergebench.stream.writer`: sequential shard writer, checksums and the index.
"""
