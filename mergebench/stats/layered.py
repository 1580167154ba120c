"""A causal LM run one decoder layer at a time, its weights read from the merge's streaming sources.

Why: the statistics of an 8B model computed on the whole model need it in float32 (32 GB, three times that
for gradients) and a downloaded copy of every checkpoint. Here no weight is downloaded and at most one
decoder layer is in memory.

How, without re-implementing any architecture:

* **Skeleton.** ``transformers`` builds the model from its ``config.json`` with every parameter on the meta
  device (``accelerate.init_empty_weights``; buffers such as rotary frequencies or Gemma's embedding scale are
  real). Its decoder layers are swapped for stubs.
* **What each layer receives.** Running the model's own forward with the stubs records exactly what it hands
  each layer — the hidden states after the embedding (and any embedding scale), the rotary position
  embeddings, the attention mask of that layer's type (causal, sliding-window, padding) — and stops at the last
  stub (:meth:`LayeredModel.embed`). Nothing of that depends on the layers' weights.
* **A layer.** Its tensors come from :class:`~mergebench.stream.reader.TensorStream` (the next layer is read
  while this one computes), are assigned to the real layer module (``load_state_dict(assign=True)``), the layer
  is called with the recorded arguments, and its parameters go back to the meta device (:meth:`free_layer`).
* **Embedding.** Only the rows of the tokens the rows use are read, in row blocks of the matrix
  (:class:`RowReader`), into a compact table the token ids are remapped into (:meth:`use_vocabulary`).
* **Head.** The same forward with the last stub returning given hidden states runs the model's final norm
  (read at start, it is small) and its head with the output embedding replaced by a block of vocabulary rows,
  so the model's own logit post-processing (e.g. Gemma-2's soft-capping) applies: logits are computed one
  vocabulary block at a time (:meth:`head_logits`), never ``[tokens, vocabulary]`` at once for the whole head.

Supported: decoder-only models whose backbone (``get_decoder()``) keeps its blocks in ``layers`` and computes
position embeddings and masks before them (Llama, Mistral, Qwen, Gemma, Gemma-2 and most ``transformers``
LLMs).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from mergebench.errors import StatisticsError
from mergebench.hub.models import ResolvedModel
from mergebench.stats.data import Batch, StatsOptions, first_line
from mergebench.stream.format import TensorEntry, element_size
from mergebench.stream.reader import TensorStream, open_source
from mergebench.stream.sources import ByteSource

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

LOAD_HINT = ("Statistics build the model from its config.json and read each tensor of its checkpoint: check that "
             "config.json describes the weights (same tensor names and shapes).")


def to_float32(raw: memoryview | None, entry: TensorEntry, rows: int | None = None) -> Tensor:
    """A float32 copy of a tensor's (or of ``rows`` of its rows') stored bytes."""
    assert raw is not None  # the stream was asked for this model's bytes
    shape = entry.shape if rows is None else (rows, *entry.shape[1:])
    if not len(raw):
        return torch.zeros(shape, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only buffers: only ever copied out of
        stored = torch.frombuffer(raw, dtype=entry.torch_dtype).view(shape)
    return stored.to(torch.float32, copy=True)


class RowReader:
    """Rows ``[begin, end)`` of one 2-D tensor of a model (an embedding matrix, an output head), read by byte range
    from its shard: a block of a 128k-token vocabulary costs its own bytes, not the matrix's."""

    def __init__(self, model: ResolvedModel, name: str) -> None:
        self.entry = model.tensor(name)
        self.rows = self.entry.shape[0]
        self.row_bytes = math.prod(self.entry.shape[1:]) * element_size(self.entry.dtype)
        self._source: ByteSource = open_source(model, model.weight_map[name])

    def read(self, begin: int, end: int) -> Tensor:
        """Float32 rows ``[begin, end)``."""
        first, last = self.entry.begin + begin * self.row_bytes, self.entry.begin + end * self.row_bytes
        rows = to_float32(self._source.read(first, last), self.entry, end - begin)
        self._source.release(first, last)
        return rows

    def gather(self, ids: Tensor, block_rows: int) -> Tensor:
        """Float32 rows ``ids`` (sorted, unique), reading only the blocks that hold one of them."""
        out = torch.empty((len(ids), *self.entry.shape[1:]), dtype=torch.float32)
        for begin in range(0, self.rows, block_rows):
            end = min(begin + block_rows, self.rows)
            inside = ((ids >= begin) & (ids < end)).nonzero().flatten()
            if len(inside):
                lo, hi = int(ids[inside[0]]), int(ids[inside[-1]]) + 1
                block = self.read(lo, hi)
                out[inside] = block[ids[inside] - lo]
        return out


class GroupStream:
    """Groups of tensors (a decoder layer's, of one or more models) as float32, read by one
    :class:`TensorStream`, so the next group is read while this one is used, within the read-ahead budget.

    An iterator object rather than a generator, and consumed with ``next()`` rather than ``enumerate``/``zip``
    (which keep their previous item): once the caller drops a group, nothing here holds it, so two layers are
    never in memory at once."""

    def __init__(self, models: Sequence[ResolvedModel], groups: Sequence[Sequence[str]], options: StatsOptions,
                 device: torch.device) -> None:
        self._models = models
        self._groups = iter(groups)
        self._device = device
        order = [(name, range(len(models))) for group in groups for name in group]
        self._items = iter(TensorStream(models, order, threads=options.threads,
                                        max_inflight_bytes=options.read_ahead_bytes, chunk_bytes=options.chunk_bytes))

    def __iter__(self) -> GroupStream:
        return self

    def __next__(self) -> list[dict[str, Tensor]]:
        group = next(self._groups, None)
        if group is None:
            for _ in self._items:  # let the stream finish and close its sources
                pass
            raise StopIteration
        out: list[dict[str, Tensor]] = [{} for _ in self._models]
        for name in group:
            item = next(self._items)
            for m, model in enumerate(self._models):
                out[m][name] = to_float32(item.raw[m], model.tensor(name)).to(self._device)
        return out


@dataclass
class LayerCall:
    """The arguments the model's forward hands one decoder layer besides its hidden states."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class Embedded:
    """One batch after the embedding: the first layer's input and every layer's other arguments."""

    hidden: Tensor
    calls: list[LayerCall]


class _Stop(Exception):
    """Raised by the last stub: the forward has recorded what it needed."""


@dataclass
class _Recorder:
    last: int
    calls: dict[int, tuple[Tensor, LayerCall]] = field(default_factory=dict)
    output: Tensor | None = None
    """What the last layer returns (:meth:`LayeredModel.head_logits`); ``None``: stop there."""


class _LayerStub(nn.Module):
    """Stands in for decoder layer ``index``: records its arguments, passes the hidden states on."""

    def __init__(self, index: int, recorder: _Recorder) -> None:
        super().__init__()
        self.index = index
        self.recorder = recorder

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        self.recorder.calls[self.index] = (hidden_states, LayerCall(args, kwargs))
        if self.index == self.recorder.last:
            if self.recorder.output is None:
                raise _Stop
            return self.recorder.output
        return hidden_states


class LayeredModel:
    """One model's skeleton, its tensor names and the readers of its weights (see the module docstring).

    Args:
        model: the resolved model (headers, commit, file list).
        folder: a folder with its ``config.json`` (:func:`mergebench.stats.data.small_files`).
        options: device and streaming settings.

    Raises:
        StatisticsError: the config cannot be built into a model, the architecture keeps no ``layers``, or the
        checkpoint lacks a tensor the config describes (or has it with another shape).
    """

    def __init__(self, model: ResolvedModel, folder: Path, options: StatsOptions) -> None:
        self.model = model
        self.options = options
        self.device = torch.device(options.device)
        self.module = _skeleton(model, folder, self.device)
        backbone = self.module.get_decoder()
        layers = getattr(backbone, "layers", None)
        if not isinstance(layers, nn.ModuleList) or not len(layers):
            raise StatisticsError(f"Model '{model.label}' ({type(self.module).__name__}) keeps no decoder blocks in "
                                  "'layers', so its statistics cannot be computed layer by layer.",
                                  hint="RegMean, Fisher and trained masks support Llama-style decoders (Llama, "
                                       "Mistral, Qwen, Gemma); merge this model with a data-free method.")
        self.layers: list[nn.Module] = list(layers)
        self.prefix = _qualified_name(self.module, layers)
        self._recorder = _Recorder(last=len(self.layers) - 1)
        backbone.layers = nn.ModuleList([_LayerStub(i, self._recorder) for i in range(len(self.layers))])
        embedding, head = self.module.get_input_embeddings(), self.module.get_output_embeddings()
        if not isinstance(embedding, nn.Embedding) or not isinstance(head, nn.Linear):
            raise StatisticsError(f"Model '{model.label}' ({type(self.module).__name__}) has no nn.Embedding input "
                                  "embedding and nn.Linear output head, so its statistics cannot be computed layer "
                                  "by layer.", hint="Merge this model with a data-free method.")
        self.embedding: nn.Embedding = embedding
        self.head: nn.Linear = head
        self.embedding_name = f"{_qualified_name(self.module, self.embedding)}.weight"
        head_name = f"{_qualified_name(self.module, self.head)}.weight"
        declared = bool(getattr(self.module.config, "tie_word_embeddings", False))
        self.tied = head_name not in model.weight_map and (self.head.weight is self.embedding.weight or declared)
        self.head_name = self.embedding_name if self.tied else head_name
        self.head_bias_name = None if self.head.bias is None else f"{_qualified_name(self.module, self.head)}.bias"
        self._check_checkpoint()
        self._padding_idx = self.embedding.padding_idx
        self._remap: Tensor | None = None
        self._readers: dict[str, RowReader] = {}

    # ---- names -------------------------------------------------------------------------------------------------
    def layer_names(self, index: int) -> list[str]:
        """Checkpoint names of decoder layer ``index``'s tensors (its state dict), in the checkpoint's order."""
        local = self.layers[index].state_dict(keep_vars=True)
        names = [f"{self.prefix}.{index}.{name}" for name in local]
        return sorted(names, key=lambda n: (self.model.weight_map[n], self.model.tensor(n).begin))

    def tail_names(self) -> list[str]:
        """Checkpoint names of the tensors outside the layers, the embedding and the head (the final norm)."""
        head = f"{_qualified_name(self.module, self.head)}."
        outside = (f"{self.prefix}.", self.embedding_name, self.head_name, head)
        return [name for name in self.module.state_dict(keep_vars=True) if not name.startswith(outside)]

    def _check_checkpoint(self) -> None:
        expected = {name: tuple(t.shape) for name, t in self.module.state_dict(keep_vars=True).items()
                    if not name.startswith(f"{self.prefix}.")}
        expected.pop(f"{_qualified_name(self.module, self.head)}.weight", None)
        expected[self.head_name] = tuple(self.head.weight.shape)
        if self.head_bias_name:
            expected[self.head_bias_name] = tuple(self.head.bias.shape)
        for index, layer in enumerate(self.layers):
            expected.update({f"{self.prefix}.{index}.{n}": tuple(t.shape)
                             for n, t in layer.state_dict(keep_vars=True).items()})
        for name, shape in expected.items():
            if name not in self.model.weight_map:
                raise StatisticsError(f"Cannot load model '{self.model.label}' for its statistics: its config "
                                      f"describes tensor '{name}' {list(shape)}, which its checkpoint does not "
                                      "have.", hint=LOAD_HINT)
            found = self.model.tensor(name).shape
            if found != shape:
                raise StatisticsError(f"Cannot load model '{self.model.label}' for its statistics: tensor '{name}' "
                                      f"is {list(found)} in its checkpoint but {list(shape)} by its config.",
                                      hint=LOAD_HINT)

    # ---- weights -----------------------------------------------------------------------------------------------
    def stream(self, models: Sequence[ResolvedModel], groups: Sequence[Sequence[str]]) -> GroupStream:
        """For each group of tensor names, in order: ``{name: float32 tensor}`` of each of ``models``
        (:class:`GroupStream`)."""
        return GroupStream(models, groups, self.options, self.device)

    def load_layer(self, index: int, tensors: Mapping[str, Tensor], *, requires_grad: bool = False) -> nn.Module:
        """Decoder layer ``index`` holding ``tensors`` (checkpoint names → float32), ready to be called."""
        layer = self.layers[index]
        local = {name.removeprefix(f"{self.prefix}.{index}."): t for name, t in tensors.items()}
        layer.load_state_dict(local, strict=True, assign=True)
        for p in layer.parameters():
            p.requires_grad_(requires_grad)
        return layer

    def free_layer(self, index: int) -> None:
        """Give decoder layer ``index``'s memory back: its tensors return to the meta device."""
        layer = self.layers[index]
        empty = {name: torch.empty_like(t, device="meta") for name, t in layer.state_dict(keep_vars=True).items()}
        layer.load_state_dict(empty, strict=True, assign=True)

    def set_tail(self, tensors: Mapping[str, Tensor]) -> None:
        """Give the tail (:meth:`tail_names`: the final norm) its tensors; it stays loaded for the whole stage."""
        self.module.load_state_dict(dict(tensors), strict=False, assign=True)

    def tail_parameters(self) -> dict[str, nn.Parameter]:
        """The tail's parameters by checkpoint name (for gradients through the final norm)."""
        params = dict(self.module.named_parameters(remove_duplicate=False))
        return {name: params[name] for name in self.tail_names() if name in params}

    def reader(self, name: str) -> RowReader:
        if name not in self._readers:
            self._readers[name] = RowReader(self.model, name)
        return self._readers[name]

    def block_rows(self, name: str) -> int:
        """Rows of ``name`` in one block of :attr:`StatsOptions.head_chunk_bytes` float32 bytes."""
        entry = self.model.tensor(name)
        return max(1, self.options.head_chunk_bytes // (4 * max(1, math.prod(entry.shape[1:]))))

    # ---- embedding ---------------------------------------------------------------------------------------------
    def use_vocabulary(self, token_ids: Tensor) -> Tensor:
        """Remap the token ids the batches will contain into a compact table (rows of those ids only).

        Returns:
            The sorted unique ids: row ``k`` of the table to give :meth:`set_table` is token ``ids[k]``.
        """
        ids = torch.unique(token_ids.flatten().cpu())
        if int(ids.max()) >= self.embedding.num_embeddings or int(ids.min()) < 0:
            raise StatisticsError(f"A token id ({int(ids.max())}) is outside the vocabulary of model "
                                  f"'{self.model.label}' ({self.embedding.num_embeddings} rows).",
                                  hint="Encode the rows with the model's own tokenizer (or one with the same "
                                       "vocabulary).")
        self._remap = torch.full((self.embedding.num_embeddings,), -1, dtype=torch.long)
        self._remap[ids] = torch.arange(len(ids))
        pad = self._padding_idx
        self.embedding.padding_idx = int(self._remap[pad]) if pad is not None and self._remap[pad] >= 0 else None
        return ids

    def set_table(self, table: Tensor) -> nn.Parameter:
        """Make ``table`` (float32 rows of the ids :meth:`use_vocabulary` returned) the embedding the forward
        looks up; its ``requires_grad`` is off until a caller wants the embedding's gradient."""
        self.embedding.weight = nn.Parameter(table.to(self.device), requires_grad=False)
        return self.embedding.weight

    def compact(self, input_ids: Tensor) -> Tensor:
        """Rows of the compact table that ``input_ids`` use (sorted, unique)."""
        assert self._remap is not None
        return torch.unique(self._remap[input_ids.flatten().cpu()])

    def _forward(self, batch: Batch, output: Tensor | None) -> Any:
        if self._remap is None:
            raise RuntimeError("use_vocabulary() must be called before the forward")
        ids = self._remap[batch.input_ids.cpu()].to(self.device)
        self._recorder.calls.clear()
        self._recorder.output = output
        try:
            return self.module(input_ids=ids, attention_mask=batch.attention_mask.to(self.device), use_cache=False)
        except _Stop:
            return None
        finally:
            self._recorder.output = None

    def embed(self, batch: Batch) -> Embedded:
        """The first layer's input (with the autograd graph back to the table when it requires grad) and the
        arguments of every layer, for ``batch``."""
        self._forward(batch, None)
        calls = [self._recorder.calls[i][1] for i in range(len(self.layers))]
        return Embedded(self._recorder.calls[0][0], calls)

    def run_layer(self, index: int, hidden: Tensor, call: LayerCall) -> Tensor:
        """Decoder layer ``index`` (loaded) on ``hidden`` with the arguments the model gives it."""
        out = self.layers[index](hidden, *call.args, **call.kwargs)
        return out[0] if isinstance(out, tuple) else out

    # ---- head --------------------------------------------------------------------------------------------------
    def head_blocks(self, rows: Callable[[str, int, int], Tensor]
                    ) -> Iterator[tuple[int, int, nn.Parameter, nn.Parameter | None]]:
        """``(begin, end, weight rows, bias rows)`` of the output head, block by block, as fresh leaves without
        gradient; ``rows(name, begin, end)`` gives the values (the checkpoint's, or trained masks' ``θ(S)``).
        Nothing here keeps a block once the next is asked for (callers drop theirs before that, too)."""
        vocabulary = self.model.tensor(self.head_name).shape[0]
        step = self.block_rows(self.head_name)
        empty = self.head.weight, self.head.bias
        try:
            for begin in range(0, vocabulary, step):
                end = min(begin + step, vocabulary)
                yield begin, end, self._leaf(rows(self.head_name, begin, end)), (
                    self._leaf(rows(self.head_bias_name, begin, end)) if self.head_bias_name else None)
        finally:  # the head module would otherwise keep the last block (head_logits sets it) for the whole stage
            self.head.weight, self.head.bias = empty

    def _leaf(self, values: Tensor) -> nn.Parameter:
        return nn.Parameter(values.to(self.device), requires_grad=False)

    def head_logits(self, batch: Batch, last_hidden: Tensor, weight: nn.Parameter, bias: nn.Parameter | None = None
                    ) -> Tensor:
        """Logits ``[B, T, rows]`` of the vocabulary rows held by ``weight`` (and ``bias``: :meth:`head_blocks`),
        computed by the model's own forward from ``last_hidden``, the output of the last decoder layer."""
        self.head.weight = weight
        if bias is not None:
            self.head.bias = bias
        logits: Tensor = self._forward(batch, last_hidden).logits
        return logits


class Weights(Protocol):
    """Where a layer-wise pass gets the values of the model's tensors (float32, on the model's device)."""

    def layers(self, indices: Sequence[int]) -> Iterator[dict[str, Tensor]]:
        """The tensors of each decoder layer of ``indices``, in that order, by checkpoint name (an iterator that
        keeps no reference to a layer it returned: take them with ``next()``)."""
        ...

    def tail(self) -> dict[str, Tensor]:
        """The tensors of :meth:`LayeredModel.tail_names`."""
        ...

    def rows(self, name: str, begin: int, end: int) -> Tensor:
        """Rows ``[begin, end)`` of an embedding or head tensor."""
        ...

    def gather(self, name: str, ids: Tensor) -> Tensor:
        """Rows ``ids`` (sorted, unique) of an embedding tensor."""
        ...


class CheckpointWeights:
    """The model's own weights, as its checkpoint stores them (Gram and Fisher statistics)."""

    def __init__(self, lm: LayeredModel) -> None:
        self.lm = lm

    def layers(self, indices: Sequence[int]) -> Iterator[dict[str, Tensor]]:
        return map(itemgetter(0), self.lm.stream([self.lm.model], [self.lm.layer_names(i) for i in indices]))

    def tail(self) -> dict[str, Tensor]:
        names = self.lm.tail_names()
        return next(iter(self.lm.stream([self.lm.model], [names])))[0] if names else {}

    def rows(self, name: str, begin: int, end: int) -> Tensor:
        return self.lm.reader(name).read(begin, end)

    def gather(self, name: str, ids: Tensor) -> Tensor:
        return self.lm.reader(name).gather(ids, self.lm.block_rows(name))


def _skeleton(model: ResolvedModel, folder: Path, device: torch.device) -> PreTrainedModel:
    """The model built from ``folder/config.json`` with parameters on the meta device, buffers on ``device``."""
    from accelerate import init_empty_weights  # type: ignore[import-untyped]
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder)
        with device, init_empty_weights(include_buffers=False):
            module = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError ... for unusable configs
        raise StatisticsError(f"Cannot load model '{model.label}' for its statistics: {type(e).__name__}: "
                              f"{first_line(e)}", hint=LOAD_HINT) from e
    module.eval()  # no dropout
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _qualified_name(root: nn.Module, target: nn.Module) -> str:
    for name, module in root.named_modules():
        if module is target:
            return name
    raise StatisticsError(f"{type(target).__name__} is not a submodule of {type(root).__name__}.",
                          hint="This architecture is not supported by layer-wise statistics.")
