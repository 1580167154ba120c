"""A loopback Hugging Face Hub: folders on disk served over HTTP to the unmodified ``huggingface_hub`` client.

MergeBench is Hub-native, and its tests, demo and air-gapped runs need a Hub that supports downloads, Range
reads, repo creation and commits offline. ``ROOT/{models,datasets,spaces}/{org}/{name}/`` are repos whose
``main`` is the folder's current content (see :mod:`.store`); :mod:`.routes` answers the endpoints the
client uses, :mod:`.validate` the card checks, :mod:`.evals` the benchmark ``eval.yaml`` check and a model's
``evalResults``, :mod:`.faults` injects failures and counts bytes, :mod:`.link` limits every body to one shared
rate (a network link), :mod:`.jobs` serves the Jobs API (each Job a local process).

>>> from mergebench.hubserver import LoopbackHub                    # doctest: +SKIP
>>> with LoopbackHub(Path("hub")) as hub:                             # doctest: +SKIP
...     os.environ |= hub.client_env()   # HF_ENDPOINT, HF_HUB_DISABLE_XET=1 (before importing the client)
...     hub.faults.http_error(503, times=2, path_glob="*.safetensors")
"""

from mergebench.hubserver.faults import FaultRule, Faults, Stats
from mergebench.hubserver.server import LoopbackHub, serve
from mergebench.hubserver.validate import Report, validate_card

__all__ = ["FaultRule", "Faults", "LoopbackHub", "Report", "Stats", "serve", "validate_card"]
