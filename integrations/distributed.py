"""Per-step losses kept on the device, moved to the host every K steps with one collective.

Reading a CUDA loss with ``.item()`` every step stalls the host until the GPU catches up. :class:`DeviceBuffer`
instead copies each detached step loss into a preallocated tensor on the loss's device (an asynchronous
device-side copy). Every K steps :meth:`DeviceBuffer.flush` does the only synchronising work: one
``all_gather_into_tensor`` of the fixed-size buffer (when ``torch.distributed`` is initialised) and one
device-to-host copy, giving for each step the mean and the max over ranks. :func:`agree` makes a boolean
decision identical on every rank. Without an initialised process group everything is local.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["DeviceBuffer", "Flushed", "agree", "dist_ready", "rank", "world_size"]


def dist_ready() -> bool:
    """True when ``torch.distributed`` is available and a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if dist_ready() else 1


def rank() -> int:
    return dist.get_rank() if dist_ready() else 0


def _collective_device(fallback: torch.device) -> torch.device:
    """NCCL needs CUDA tensors and gloo CPU ones; pick the device the default group's backend wants."""
    if not dist_ready():
        return fallback
    backend = str(dist.get_backend()).lower()
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if backend == "gloo":
        return torch.device("cpu")
    return fallback


@dataclass(frozen=True)
class Flushed:
    """Host-side result of a flush: per-step ``mean`` and ``max`` over ranks of each channel.

    ``mean[c, i]``/``max[c, i]`` hold channel ``c`` (0 = loss, then the extra channels) at the ``i``-th pushed
    step; ``count`` is the number of steps (the same on every rank).
    """

    mean: np.ndarray
    max: np.ndarray
    count: int


class DeviceBuffer:
    """A ``(channels, capacity)`` float32 buffer on the device of the first pushed value.

    :meth:`push` stores one step's values (tensors are detached and copied device-side; Python floats are
    written with ``fill_``); it never reads a value back. :meth:`flush` returns a :class:`Flushed` and empties
    the buffer; on a full buffer :meth:`push` raises ``BufferError`` (the caller flushes every ``capacity`` steps).
    """

    def __init__(self, capacity: int, channels: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.capacity = capacity
        self.channels = channels
        self._buf: torch.Tensor | None = None
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def device(self) -> torch.device | None:
        return None if self._buf is None else self._buf.device

    def _alloc(self, like: torch.Tensor | float) -> torch.Tensor:
        device = like.device if isinstance(like, torch.Tensor) else torch.device("cpu")
        # Fill with NaN so a channel that was never pushed reads as missing, not as zero.
        self._buf = torch.full(
            (self.channels, self.capacity), float("nan"), dtype=torch.float32, device=device
        )
        return self._buf

    def push(self, *values: torch.Tensor | float | None) -> None:
        """Store one step: ``values[c]`` goes to channel ``c`` (``None`` or missing channels stay NaN)."""
        if len(values) > self.channels:
            raise ValueError(f"got {len(values)} values for {self.channels} channel(s)")
        if self._n >= self.capacity:
            raise BufferError(f"buffer full ({self.capacity} steps): flush() first")
        buf = self._buf if self._buf is not None else self._alloc(values[0] if values else 0.0)
        col = buf[:, self._n]
        for c, value in enumerate(values):
            if value is None:
                continue
            if isinstance(value, torch.Tensor):
                col[c].copy_(value.detach().reshape(()), non_blocking=True)
            else:
                col[c].fill_(float(value))
        self._n += 1

    def flush(self, reduce: bool = True) -> Flushed:
        """Move the buffered steps to the host, reduced over ranks when ``reduce`` and a group is initialised.

        All ranks must call this at the same step (it is a collective). The whole fixed-size buffer is
        gathered, with each rank's count appended, so ranks never disagree on message sizes; if the counts
        differ (a caller bug), the common prefix is kept, with a warning.
        """
        n = self._n
        self._n = 0
        buf = self._buf
        if buf is None:
            buf = self._alloc(0.0)
        if not (reduce and dist_ready()):
            local = buf[:, :n].cpu().double().numpy()
            buf.fill_(float("nan"))
            return Flushed(mean=local, max=local.copy(), count=n)
        ws = dist.get_world_size()
        dev = _collective_device(buf.device)
        packed = torch.empty((self.channels + 1, self.capacity), dtype=torch.float32, device=dev)
        packed[: self.channels].copy_(buf)
        packed[self.channels].fill_(float(n))
        gathered = torch.empty((ws * (self.channels + 1), self.capacity), dtype=torch.float32, device=dev)
        dist.all_gather_into_tensor(gathered, packed)
        host = gathered.cpu().double().numpy().reshape(ws, self.channels + 1, self.capacity)
        buf.fill_(float("nan"))
        counts = host[:, self.channels, 0].astype(np.int64)
        common = int(counts.min())
        if (counts != common).any():
            warnings.warn(
                f"ranks flushed different step counts {counts.tolist()}; keeping the first {common}",
                RuntimeWarning,
                stacklevel=2,
            )
        values = host[:, : self.channels, :common]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN channels are legitimate (never pushed)
            mean = values.mean(axis=0)
            mx = values.max(axis=0)
        return Flushed(mean=mean, max=mx, count=common)

    def peek(self) -> np.ndarray:
        """This rank's buffered values, ``(channels, len)`` on the host, without a collective or emptying.

        For checkpoints (already a sync point); the regular path is :meth:`flush`.
        """
        if self._buf is None:
            return np.empty((self.channels, 0))
        return self._buf[:, : self._n].cpu().double().numpy()

    def state_dict(self) -> dict[str, int]:
        """Only the shape: buffered values are flushed before any checkpoint that matters."""
        return {"capacity": self.capacity, "channels": self.channels}


def agree(flag: bool, *, mode: str = "any", device: torch.device | None = None) -> bool:
    """The same boolean on every rank: ``any`` (true if one rank says so) or ``all``; local without a group."""
    if mode not in ("any", "all"):
        raise ValueError(f"mode must be 'any' or 'all', got {mode!r}")
    if not dist_ready():
        return bool(flag)
    dev = _collective_device(device or torch.device("cpu"))
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if mode == "any" else dist.ReduceOp.MIN)
    return bool(t.item())
