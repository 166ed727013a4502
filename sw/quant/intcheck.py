"""``lowbit check-integer``: decode under a guard that fails on any floating-point tensor operation.

``lowbit check-integer --model M [--split S --limit N --beam K]`` loads the model, reads and
tokenizes the sentences, and then decodes them with every tensor operation watched: from the
moment the token ids become a tensor until the decoded ids come back, each operation's inputs
and outputs must be integer (or boolean) tensors. The matmul kernels are evaluated with integer
tensors too (``golden.integer_evaluation``, on the CPU), so nothing is exempt. The last line is
``integer-only: yes (N tensor ops checked)``; the first floating-point operation ends the decode
with ``integer-only: no (...)`` naming it and where it was called, exit status 1.

Two guards watch: a :class:`~torch.overrides.TorchFunctionMode` sees every torch function and
tensor method called from Python (and names them), a
:class:`~torch.utils._python_dispatch.TorchDispatchMode` every ATen operation they run, including
those inside composite functions (and counts them).
"""

from __future__ import annotations

import contextlib
import traceback
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from . import kernels

_PACKAGE = Path(__file__).resolve().parents[1]   # sw/ (installed as lowbit/sw)


class FloatOperation(Exception):
    """A floating-point tensor operation ran under :func:`integer_guard`."""


def _first_float(*trees):
    for tree in trees:
        for leaf in tree_flatten(tree)[0]:
            if isinstance(leaf, torch.Tensor) and (leaf.dtype.is_floating_point
                                                   or leaf.dtype.is_complex):
                return leaf
    return None


# frames that only forward a call: this guard and the kernel / operation dispatch
_FORWARDERS = (Path(__file__).resolve(), Path(kernels.__file__).resolve())


def _where() -> str:
    """The innermost caller inside the lowbit package (file:line in function), and the
    matmul or operation site running, if any."""
    site = kernels.current_site()
    at = f" (site {site.name})" if site is not None else ""
    for frame in reversed(traceback.extract_stack()[:-1]):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(_PACKAGE) and path not in _FORWARDERS:
            return f"{path.relative_to(_PACKAGE.parent)}:{frame.lineno} in {frame.name}{at}"
    return "outside lowbit" + at


def _describe(name: str, tensor: torch.Tensor) -> str:
    return f"{name} on {str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)} at {_where()}"


class _FunctionGuard(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
        name = name.replace("TensorBase.", "Tensor.")
        bad = _first_float(args, kwargs)
        if bad is not None:
            raise FloatOperation(_describe(name, bad))
        try:
            out = func(*args, **kwargs)
        except FloatOperation as e:    # an ATen operation inside: name the Python call
            raise FloatOperation(f"{name} at {_where()} ({e})") from None
        bad = _first_float(out)
        if bad is not None:
            raise FloatOperation(_describe(name, bad))
        return out


class _DispatchGuard(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.count += 1
        bad = _first_float(args, kwargs)
        if bad is None:
            out = func(*args, **kwargs)
            bad = _first_float(out)
            if bad is None:
                return out
        raise FloatOperation(f"ATen {func} on {str(bad.dtype).removeprefix('torch.')} "
                             f"{list(bad.shape)}")


@contextlib.contextmanager
def integer_guard():
    """Inside the block every tensor operation must be an integer one, or
    :class:`FloatOperation` is raised. Yields an object whose ``count`` is the number of ATen
    operations checked so far."""
    from lowbit.sw import golden

    dispatch = _DispatchGuard()
    with golden.integer_evaluation(), _FunctionGuard(), dispatch:
        yield dispatch


def check_integer(model, tokenizer, sentences: list[str], opts, log=print) -> tuple[bool, str]:
    """Decode ``sentences`` under :func:`integer_guard`.

    Returns ``(True, "N tensor ops checked")`` or ``(False, description of the first
    floating-point operation)``. The token ids are made (and the model is run) inside the
    guard; loading the model and tokenizing the text happen before it.
    """
    from lowbit.sw.decode import decode_batch, pad_batch

    limit = min(opts.max_input_tokens, model.config.max_position_embeddings)
    encoded = []
    for s in sentences:
        if s.strip():
            ids = tokenizer.encode(s, "source")
            encoded.append(ids[:limit - 1] + [tokenizer.eos_id] if len(ids) > limit else ids)
    encoded.sort(key=len)
    decoded = 0
    try:
        with integer_guard() as guard:
            for j in range(0, len(encoded), opts.batch_size):
                src = pad_batch(encoded[j:j + opts.batch_size], tokenizer.pad_id)
                decoded += len(decode_batch(model, src, opts))
    except FloatOperation as e:
        return False, f"first floating-point operation: {e}"
    log(f"decoded {decoded} sentences, every tensor operation on integers")
    return True, f"{guard.count} tensor ops checked"
