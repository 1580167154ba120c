"""``use_endpoint`` also points huggingface_hub's module-level functions (one shared ``HfApi``) at the
loopback Hub: Gradio's local OAuth mock calls ``huggingface_hub.whoami()``."""

import huggingface_hub


def test_module_level_whoami_reaches_the_loopback_hub(hub):
    assert huggingface_hub.whoami()["name"] == "alice"
    assert huggingface_hub.hf_api.api.endpoint == hub.url.rstrip("/")
