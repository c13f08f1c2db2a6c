"""Scoring slices: a head and its encoder in reduced precision, channels-last or compiled (:class:`Scorer`).

The settings live in :class:`tomofield.EngineConfig` (``amp``, ``channels_last``,
``compile``, ``batch_size``); docs/benchmarks.md holds the measurements behind their
defaults.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from tomofield.errors import ComponentError, InputError, TomofieldError
from tomofield.geometry import Directions
from tomofield.pipeline.plan import Tick
from tomofield.pipeline.slicing import Slicer

AMP_MODES = ("auto", "off", "bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: The occupancy test uses at most this many blocks per axis.

_compiled: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], nn.Module]] = weakref.WeakKeyDictionary()


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an ``amp`` setting: ``auto`` is fp16 on CUDA, off elsewhere.

    fp16 rather than bf16: the tomo filter takes second differences of the logits of
    neighbouring slices, which bf16's 8-bit mantissa blurs (docs/benchmarks.md: filtered
    profiles correlate at 0.91 with fp32 in bf16, 0.998 in fp16, at the paper's M = 100);
    on GPUs both run the tensor cores at the same rate. On CPU fp16 is not faster than
    fp32 and bf16 is only fast with native bf16 units, so ``auto`` stays in fp32 there.
    """
    if amp not in AMP_MODES:
        raise ValueError(f"unknown amp mode {amp!r}; valid: {', '.join(AMP_MODES)}")
    if amp == "auto":
        return torch.float16 if device.type == "cuda" else None
    return _AMP_DTYPES.get(amp)


def encoder_dtype(head, amp: str, device: torch.device) -> torch.dtype | None:
    """The dtype a head's encoder runs in under ``amp`` on ``device`` (None: float32).

    :func:`amp_dtype`, except that under ``auto`` a head that needs gradients (the CAM heads)
    stays in float32: they can underflow in fp16, so reduced precision is theirs only on
    request (``amp="fp16"`` or ``"bf16"``).
    """
    if amp == "auto" and getattr(head, "needs_grad", False):
        return None
    return amp_dtype(amp, device)


def _out_of_memory(exc: BaseException) -> torch.OutOfMemoryError | None:
    """The out-of-memory error behind ``exc``: itself, its cause or context, or a compiler's inner exception."""
    stack: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        if isinstance(e, torch.OutOfMemoryError):
            return e
        seen.add(id(e))
        stack += [getattr(e, "inner_exception", None), e.__cause__, e.__context__]
    return None


class _CompiledOrEager(nn.Module):
    """Runs the compiled module; when compiling fails, warns once and stays eager.

    ``torch.compile`` compiles lazily, so a missing C++ compiler or an unsupported
    operator shows up at a call, not when compiling is requested. Only failures of the
    compiler turn compilation off: an out-of-memory error (itself or behind the
    compiler's error) propagates, so that the scorer halves its batch and the compiled
    module runs the next one, and an error the eager module raises too (the input's
    fault) propagates with compilation kept on.
    """

    fast: Callable[[Tensor], Tensor]  # set in __init__, not a submodule

    def __init__(self, eager: nn.Module, fast: Callable) -> None:
        super().__init__()
        self.eager = eager
        object.__setattr__(self, "fast", fast)  # not a submodule: the parameters are eager's
        self.failed = False

    def forward(self, x: Tensor) -> Tensor:
        if self.failed:
            return self.eager(x)
        try:
            return self.fast(x)
        except Exception as exc:
            oom = _out_of_memory(exc)
            if oom is exc:
                raise
            if oom is not None:
                raise oom from None
            result = self.eager(x)  # raises when the input is at fault: compilation stays on
            self.failed = True
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); running eagerly", stacklevel=2)
            return result


def compiled(encoder: nn.Module) -> nn.Module:
    """``torch.compile(encoder)`` with frozen weights, built once per module and weights.

    Freezing folds the weights into the graph (conv + batch-norm fusion, prepacked
    oneDNN weights on CPU); the cache is keyed by the parameters' version counters, so
    weights changed in place later get a fresh compilation. Runs the module itself, with
    a warning, when compiling fails (no C++ compiler, unsupported platform); out of
    memory is not a compiler failure and propagates (:class:`_CompiledOrEager`).
    """
    try:
        versions = tuple(p._version for p in encoder.parameters())
    except RuntimeError:  # inference tensors keep no version counter (and cannot change)
        versions = ()
    cached = _compiled.get(encoder)
    if cached is None or cached[0] != versions:
        try:
            fast = torch.compile(encoder, dynamic=False, options={"freezing": True})
        except Exception as exc:
            if _out_of_memory(exc) is not None:
                raise
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); running eagerly", stacklevel=3)
            fast = encoder
        _compiled[encoder] = cached = (versions, _CompiledOrEager(encoder, fast))
    return cached[1]


class Scorer:
    """Runs a head on batches of slices with the engine's speed settings.

    Args:
        head: the head; ``head(encoder, slices)`` -> (N, K, h, w).
        encoder: the encoder, or None for heads that need none.
        device: where the slices live.
        amp: autocast setting (``auto``, ``off``, ``bf16``, ``fp16``).
        channels_last: feed the encoder channels-last slices.
        compile: ``torch.compile`` the encoder when the head says it may
            (``head.compilable``).
        batch_size: slices per encoder batch; halves after an out-of-memory error and
            stays so for the rest of this scorer's work.
        label: how messages name the head (``head 'logit' with options {...}``).

    Attributes:
        dtype: the autocast dtype, or None for float32.
        pad_to: compiled encoders see one batch shape: batches are padded to ``batch_size``.
    """

    def __init__(
        self,
        head,
        encoder: nn.Module | None,
        device: torch.device,
        *,
        amp: str = "off",
        channels_last: bool = False,
        compile: bool = False,
        batch_size: int = 64,
        label: str = "the head",
    ) -> None:
        self.head, self.device, self.batch_size, self.label = head, device, int(batch_size), label
        self._checked: dict[tuple[int, ...], Tensor] = {}
        self.dtype: torch.dtype | None = None
        self.channels_last, self.pad_to = False, False
        if encoder is not None:
            if channels_last:
                encoder = encoder.to(memory_format=torch.channels_last)
            # compiled graphs drop hooks and autograd tricks: only heads that say they allow it
            compile = compile and bool(getattr(head, "compilable", False))
            if compile:
                encoder = compiled(encoder)
            self.dtype = encoder_dtype(head, amp, device)
            self.channels_last, self.pad_to = channels_last, compile
        self.encoder = encoder

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self.dtype):
                yield

    def __call__(self, slices: Tensor) -> Tensor:
        """Float32 scores (N, K, h, w) of slices (N, C, h, w)."""
        n = slices.shape[0]
        if self.pad_to and n < self.batch_size:
            slices = torch.cat([slices, slices.new_zeros(self.batch_size - n, *slices.shape[1:])])
        if self.channels_last:
            slices = slices.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            scores = self.head(self.encoder, slices)
        self._check_scores(scores, slices)
        return scores[:n].float()

    def _check_scores(self, scores: object, slices: Tensor) -> None:
        """Refuse what a head returns that is not scores (N, K, h', w') of these N slices: cheap, no sync.

        Every batch of one slice shape keeps the zero slice's K, h' and w' (:meth:`check`).
        """
        m = slices.shape[0]
        if isinstance(scores, Tensor) and scores.dim() == 4 and scores.shape[0] == m:
            probe = self._checked.get(tuple(slices.shape[1:]))
            if probe is None or probe.shape[1:] == scores.shape[1:]:
                return
            raise ComponentError(
                f"{self.label} returned scores of shape {tuple(scores.shape)} for a batch of {m} slices but "
                f"{tuple(probe.shape)} for one zero slice: a head's scores (N, K, h', w') keep K, h' and w'; "
                "a fault of the head, not of the input"
            )
        raise ComponentError(
            f"{self.label} returned {ComponentError.got(scores)} for {m} slice(s) {tuple(slices.shape)}; a head "
            f"returns scores (N, K, h', w'), here ({m}, K, h', w') (tomofield.protocols.Head): a fault of the "
            "head, not of the input"
        )

    def _run(self, slices: Tensor) -> Tensor:
        """:meth:`__call__` on a batch of the volume's slices: what the head raises names the head."""
        try:
            return self(slices)
        except (TomofieldError, torch.OutOfMemoryError):
            raise
        except Exception as exc:
            if _out_of_memory(exc) is not None:
                raise
            raise ComponentError(
                f"{self.label} failed on a batch of {slices.shape[0]} slices {tuple(slices.shape)}, after scoring a "
                f"zero slice of that shape: {type(exc).__name__}: {exc}"
            ) from exc

    def empty_score(self, channels: int, size: tuple[int, int]) -> Tensor:
        """Score (1, K, h, w) of a slice of zeros."""
        return self(torch.zeros(1, channels, *size, device=self.device))

    def check(self, channels: int, size: tuple[int, int]) -> Tensor:
        """The score of a zero slice, once per slice shape: where the head first meets its encoder.

        This is the boundary of a reconstruction: what the head or encoder refuses here (a
        ``target`` beyond the encoder's outputs, a CAM ``layer`` it does not have, slices of
        the wrong channel count) reaches the caller as one :class:`InputError` naming the
        head and its options, before any work is done.
        """
        key = (channels, *size)
        if key not in self._checked:
            try:
                self._checked[key] = self.empty_score(channels, size)
            except (TomofieldError, torch.OutOfMemoryError):
                raise
            except Exception as exc:
                if _out_of_memory(exc) is not None:
                    raise
                encoder = " with this encoder" if self.encoder is not None else ""
                raise InputError(
                    f"{self.label} cannot score {channels}-channel slices of {size[0]} x {size[1]} px{encoder}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        return self._checked[key]

    def score_chunk(
        self, slicer: Slicer, dirs: Directions, hits: Tensor | None, empty: Tensor | None, tick: Tick
    ) -> Tensor:
        """Scores (L, S, K, h, w) of every slice of a chunk of directions.

        Slices are cut in batches across directions; where ``hits`` (L, S) is False the
        slice samples nothing above the empty tolerance and gets ``empty`` unrun.
        """
        L, S = len(dirs), dirs.num_slices + 2 * slicer.plan.pad
        state = slicer.prepare(dirs)
        device = slicer.volume.device
        if hits is None:
            run = torch.arange(L * S, device=device)
        else:
            run = hits.reshape(-1).nonzero()[:, 0].to(device, non_blocking=True)
        n_run = run.shape[0]
        outs, b = [], 0
        while b < n_run:
            bs = self.batch_size
            j = run[b : b + bs]
            try:
                outs.append(self._run(slicer.cut(dirs, state, j)))
            except torch.OutOfMemoryError:
                if bs == 1:
                    raise
                self.batch_size = max(1, bs // 2)  # carry on with half the batch, from now on
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                warnings.warn(
                    f"out of memory with batches of {bs} slices; continuing with {self.batch_size}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            b += j.shape[0]
            tick(j.shape[0])
        if hits is None:
            scores = torch.cat(outs)
        else:
            assert empty is not None  # given with hits (Engine.run: both come with the occupancy)
            scores = empty.expand(L * S, *empty.shape[1:]).clone()
            if outs:
                scores[run] = torch.cat(outs)
            tick(L * S - n_run)
        return scores.reshape(L, S, *scores.shape[1:])
