"""The layer-by-layer model against the whole model ``transformers`` loads, and the on-disk helpers.

A statistics stage is only as right as the hidden states and logits it computes from streamed layers: they
must be those of ``AutoModelForCausalLM.from_pretrained`` on the same folder — with right padding (Gram
batches), Gemma-2's sliding-window layers, embedding scale, tied head and logit soft-capping.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM

from mergebench.fixtures import Family, validation_rows
from mergebench.fixtures.tiny import read_tensors
from mergebench.fixtures.tokenizer import build_tokenizer
from mergebench.prompt import encode_chat
from mergebench.stats import ModelSource, StatsOptions
from mergebench.stats.cache import StatisticsFile, open_statistics, scratch_statistics
from mergebench.stats.data import Sample, collate
from mergebench.stats.fisher import compute_fisher, fisher_entries
from mergebench.stats.gram import compute_gram, gram_entries
from mergebench.stats.layered import CheckpointWeights, LayeredModel
from mergebench.stats.spill import Spill

OPTIONS = StatsOptions(progress=False, head_chunk_bytes=50 * 64 * 4)  # 50 vocabulary rows per head block


def padded_batch() -> tuple[list[Sample], torch.Tensor, torch.Tensor]:
    tok = build_tokenizer()
    samples = []
    for i, row in enumerate(validation_rows("coding", 3)):
        ids, labels = encode_chat(tok, row["messages"], max_length=40 - 9 * i)  # three lengths: right padding
        samples.append(Sample(str(i), ids, labels))
    batch = collate(samples, pad_id=3)
    return samples, batch.input_ids, batch.attention_mask


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_layers_and_head_reproduce_the_whole_model(arch: str, request: pytest.FixtureRequest) -> None:
    family: Family = request.getfixturevalue(f"tiny_{arch}")
    folder = family.experts["safety"]
    samples, ids, mask = padded_batch()
    full = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = full(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)

    source = ModelSource.at(folder)
    lm = LayeredModel(source.model, folder, OPTIONS)
    weights = CheckpointWeights(lm)
    assert lm.tied == (arch == "gemma2")
    vocabulary = lm.use_vocabulary(ids)
    lm.set_table(weights.gather(lm.embedding_name, vocabulary))
    lm.set_tail(weights.tail())
    batch = collate(samples, pad_id=3)
    real = mask.bool()
    with torch.no_grad():
        embedded = lm.embed(batch)
        hidden = embedded.hidden
        torch.testing.assert_close(hidden[real], expected.hidden_states[0][real], rtol=0, atol=0)
        for i, tensors in enumerate(weights.layers(range(len(lm.layers)))):
            lm.load_layer(i, tensors)
            hidden = lm.run_layer(i, hidden, embedded.calls[i])
            lm.free_layer(i)
            if i < len(lm.layers) - 1:  # transformers' last hidden state is after the final norm
                torch.testing.assert_close(hidden[real], expected.hidden_states[i + 1][real], rtol=1e-5, atol=1e-6)
        assert all(p.device.type == "meta" for p in lm.layers[0].parameters())
        blocks = [lm.head_logits(batch, hidden, w, b) for _, _, w, b in lm.head_blocks(weights.rows)]
    assert len(blocks) > 1
    torch.testing.assert_close(torch.cat(blocks, dim=-1)[real], expected.logits[real], rtol=1e-5, atol=1e-5)
    if arch == "gemma2":  # soft-capping applied per block, as the model does to the whole vocabulary
        assert float(torch.cat(blocks, dim=-1).abs().max()) <= full.config.final_logit_softcapping


def test_embedding_rows_are_gathered_from_blocks(tiny_llama: Family) -> None:
    source = ModelSource.at(tiny_llama.base)
    lm = LayeredModel(source.model, tiny_llama.base, StatsOptions(progress=False, head_chunk_bytes=7 * 64 * 4))
    reader = lm.reader(lm.embedding_name)
    stored = read_tensors(tiny_llama.base)[lm.embedding_name].float()
    ids = torch.tensor([0, 5, 6, 7, 30, 31, stored.shape[0] - 1])
    assert torch.equal(reader.gather(ids, lm.block_rows(lm.embedding_name)), stored[ids])
    assert torch.equal(reader.read(3, 11), stored[3:11])


def test_a_config_that_does_not_describe_the_checkpoint_is_named(tiny_llama: Family, tmp_path: Path) -> None:
    from mergebench.errors import StatisticsError

    source = ModelSource.at(tiny_llama.base)
    (tmp_path / "config.json").write_text((tiny_llama.base / "config.json").read_text()
                                          .replace('"intermediate_size": 128', '"intermediate_size": 96'))
    with pytest.raises(StatisticsError, match=r"tensor 'model.layers.0.mlp.gate_proj.weight' is \[128, 64\] in its "
                                              r"checkpoint but \[96, 64\] by its config") as info:
        LayeredModel(source.model, tmp_path, OPTIONS)
    assert "config.json describes the weights" in (info.value.hint or "")


def test_spill_round_trips_and_frees_its_disk(tmp_path: Path) -> None:
    tensors = {("h", 0): torch.randn(3, 5), ("h", 1): torch.randn(0, 4), "ids": torch.arange(7),
               "half": torch.randn(2, 2).to(torch.bfloat16)}
    with Spill(tmp_path) as spill:
        for key, value in tensors.items():
            spill.put(key, value)
        assert not list(tmp_path.iterdir()), "the spill file is unlinked from the start"
        for key, value in tensors.items():
            got = spill.get(key)
            assert got.dtype == value.dtype and torch.equal(got, value)
        assert spill.bytes_written == sum(t.numel() * t.element_size() for t in tensors.values())


def test_statistics_files_are_filled_in_place(tmp_path: Path) -> None:
    entries = [("a", torch.float32, (4, 3)), ("b", torch.bool, (2,)), ("c", torch.float32, (5,))]
    path = tmp_path / "stats" / "x.safetensors"
    a = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    with open_statistics(path, entries, {"stage": "gram", "n": 3}) as out:
        out.write("a", a[:2])                       # rows 0–1
        out.write("a", a[2:], 2)                    # rows 2–3
        out.add("a", torch.ones(1, 3), 1)           # row 1 + 1
        out.add_rows("c", torch.tensor([0, 1, 3]), torch.tensor([1.0, 2.0, 4.0]))
        out.add_rows("c", torch.tensor([3, 4]), torch.tensor([1.0, 1.0]))
        out.write("b", torch.tensor([True, False]))
        assert torch.equal(out.gather("c", torch.tensor([1, 3, 4])), torch.tensor([2.0, 5.0, 1.0]))
        assert not path.exists(), "written beside the target, renamed at the end"
    loaded = load_file(path)
    expected_a = a.clone()
    expected_a[1] += 1
    assert torch.equal(loaded["a"], expected_a)
    assert torch.equal(loaded["b"], torch.tensor([True, False]))
    assert torch.equal(loaded["c"], torch.tensor([1.0, 2.0, 0.0, 5.0, 1.0]))
    from mergebench.stats.cache import read_metadata

    meta = read_metadata(path)
    assert meta["mergebench.stage"] == "gram" and meta["mergebench.n"] == "3" and meta["format"] == "pt"

    with pytest.raises(RuntimeError, match="boom"), open_statistics(tmp_path / "y.safetensors", entries, {}) as out:
        out.write("c", torch.ones(5))
        raise RuntimeError("boom")
    assert not list(tmp_path.glob("*y.safetensors*")), "a failed stage leaves nothing behind"

    scratch = scratch_statistics(tmp_path / "scratch", entries)
    scratch.add("c", torch.ones(5))
    assert torch.equal(scratch.read("c"), torch.ones(5)) and not list((tmp_path / "scratch").iterdir())
    scratch.close()


def test_layer_calls_do_not_touch_unloaded_layers(tiny_gemma2: Family) -> None:
    """The stubs stand in for the layers: embedding a batch runs no decoder layer (their weights are on meta)."""
    source = ModelSource.at(tiny_gemma2.base)
    lm = LayeredModel(source.model, tiny_gemma2.base, OPTIONS)
    samples, ids, _ = padded_batch()
    lm.set_table(CheckpointWeights(lm).gather(lm.embedding_name, lm.use_vocabulary(ids)))
    embedded = lm.embed(collate(samples, pad_id=3))
    assert len(embedded.calls) == 4 and all(isinstance(layer, nn.Module) for layer in lm.layers)
    sliding = [call.kwargs["attention_mask"] for call in embedded.calls]
    assert not torch.equal(sliding[0], sliding[1])  # Gemma-2 alternates sliding-window and full attention


def test_a_streamed_layer_is_freed_as_soon_as_it_is_dropped(tiny_llama: Family) -> None:
    """Neither the weight stream nor the θ(S) of trained masks keeps a layer it handed out: dropping it frees
    it, so the next layer never shares memory with the previous one."""
    from mergebench.stats.masks import _MaskedWeights, _Tensors, _Thresholds

    lm = LayeredModel(ModelSource.at(tiny_llama.base).model, tiny_llama.base, OPTIONS)
    tensors = _Tensors(lm, ModelSource.at(tiny_llama.experts["math"]).model, merge_embeddings=False)
    masked = _MaskedWeights(tensors, _Thresholds(tensors, 0.1, "global"), 3.0, None)
    for weights in (CheckpointWeights(lm), masked):
        layers = weights.layers(range(len(lm.layers)))
        first = next(layers)
        alive = [weakref.ref(t) for t in first.values()]
        del first
        assert all(ref() is None for ref in alive)
        assert set(next(layers)) == set(lm.layer_names(1))


class _WatchedWeights(CheckpointWeights):
    """Checkpoint weights that check, whenever a decoder layer is read, that no layer read before and no statistic
    written to ``out`` since is still alive: nothing of one layer may share memory with the next."""

    def __init__(self, lm: LayeredModel, out: StatisticsFile) -> None:
        super().__init__(lm)
        self.held: list[weakref.ref[torch.Tensor]] = []
        self.reads = 0
        for method in ("write", "add"):
            original = getattr(out, method)

            def recording(name: str, values: torch.Tensor, *rest: int, _original: Any = original) -> None:
                self.held.append(weakref.ref(values))
                _original(name, values, *rest)

            setattr(out, method, recording)

    def layers(self, indices: Sequence[int]) -> Iterator[dict[str, torch.Tensor]]:
        stream = super().layers(indices)
        for _ in indices:
            yield self._checked(next(stream))  # not bound to a name: this suspended frame keeps no layer

    def _checked(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        alive = sum(ref() is not None for ref in self.held)
        assert not alive, f"read {self.reads}: {alive} tensor(s) of earlier layers are still in memory"
        self.reads += 1
        self.held += [weakref.ref(t) for t in tensors.values()]
        return tensors


@pytest.mark.parametrize("stage", ["gram", "fisher"])
def test_a_layer_and_its_statistics_are_gone_before_the_next_layer_is_read(stage: str, tiny_llama: Family,
                                                                           tmp_path: Path) -> None:
    """The bound on a statistics stage's memory is one layer: its weights, accumulators and statistics must be
    freed before the next layer comes in (a loop variable or an autograd graph that outlives its layer doubles
    the peak at 8B: 0.9 GB of weights, 0.8 GB of a down-projection Gram)."""
    lm = LayeredModel(ModelSource.at(tiny_llama.experts["math"]).model, tiny_llama.experts["math"], OPTIONS)
    tok = build_tokenizer()
    samples = [Sample(str(i), *encode_chat(tok, row["messages"], max_length=256))
               for i, row in enumerate(validation_rows("math", 3))]
    entries = gram_entries(lm) if stage == "gram" else fisher_entries(lm, merge_embeddings=False)
    with open_statistics(tmp_path / "stats.safetensors", entries, {"stage": stage}) as out:
        weights = _WatchedWeights(lm, out)
        if stage == "gram":
            compute_gram(lm, weights, [collate(samples, pad_id=3)], out, tmp_path / "work")
        else:
            compute_fisher(lm, weights, samples, out, pad_id=3, spill=lambda: Spill(tmp_path / "work"))
    assert weights.reads == len(lm.layers) * (1 if stage == "gram" else 2)
