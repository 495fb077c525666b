"""The compiled training step: Pyro's ELBO on the VAE's model and guide, captured once per batch shape.

Eagerly, every step runs the two Pyro programs under Pyro's tracing (the guide's trace, the model
replayed against it, the ELBO's bookkeeping), then the autograd engine. All of that Python work gives
the same tensor operations at every step of a run: same programs, same shapes, same objective. So
:class:`CapturedLoss` runs it **once** per batch shape with fake tensors
(``torch.fx.experimental.proxy_tensor.make_fx``), recording every tensor operation of the loss *and* of
its backward pass into one graph ``(parameters, buffers, x) -> (loss, gradients)``, and later steps
run that graph. The model, the guide and Pyro's ELBO stay the definition of the loss: the graph is
what they compute, recorded, and its random draws (``aten.normal`` and friends) are operations of the
graph, drawn afresh from torch's generator at every call.

Three ways to run it (``fit(compile=...)``, ``--compile``):

* ``"off"``: eager steps, the reference (:class:`ppl_vae.infer.step.TrainStep` without a graph).
* ``"trace"``: the recorded graph, run as Python calls of the recorded operations; about a second
  to record per batch shape, no compiler needed. Same operations in the same order as eager, so the
  same numbers (tests check it bit for bit).
* ``"on"``: the recorded graph compiled by ``torch.compile`` (Inductor: fused C++/OpenMP kernels on the
  CPU, Triton on a GPU, where the static step is also captured as a CUDA graph, the
  ``"reduce-overhead"`` setting). Random draws keep torch's generator (``fallback_random``), so they are
  the eager draws; the arithmetic differs from eager by float rounding. Compiling takes seconds to tens
  of seconds; Inductor caches compiled graphs on disk across runs.
* ``"auto"`` (the default): a batch shape is recorded when the run plans at least
  :data:`AUTO_RECORD_STEPS` steps of it, and compiled when the run plans at least
  :data:`AUTO_COMPILE_EXAMPLES` examples in batches of that shape and the networks are fully connected
  (a convolutional step is the convolutions' own kernels either way: compiling measured no faster). The
  rule looks only at the run's settings, never at timings or at what is cached, so the same run takes
  the same path every time (and on resume).

Accepted: a :class:`ppl_vae.VAE` trained with ``auto``, ``trace`` or ``meanfield``, in one process,
with a constant beta. Anything else runs eager steps, and :func:`refusal`
says why in one line. Recording itself refuses programs whose operations depend on the *values* of
tensors (fake tensors have none) and programs that read ``pyro.param`` sites (their updates would not
reach the graph); those fall back to eager steps too, with the reason.

Pyro's ``torch_item`` and ``warn_if_nan`` read values (``.item()``, ``bool(isnan(...).any())``), so they
cannot be recorded; :func:`traceable_pyro` swaps them, while recording only, for versions that keep the
value as a (double) tensor and leave the non-finite check to :class:`ppl_vae.infer.optim.GuardedAdam` (which
checks every gradient anyway). Pyro already does this for ``torch.jit`` (``torch._C._get_tracing_state()``
in ``TraceMeanField_ELBO``); the upstream fix is to take the same branch under
``torch.compiler.is_compiling()`` and fake-tensor tracing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine

#: ``fit(compile=...)`` and ``--compile``.
COMPILE_CHOICES = ("auto", "on", "trace", "off")
#: Batch shapes (with their other step arguments) recorded per run; more run eager steps.
MAX_GRAPHS = 4
#: ``auto`` records a batch shape when the run plans at least this many steps of it: recording takes
#: about a second and saves 1-4 ms a step (benchmarks/BENCHMARKS.md), so a one-off shape (the last,
#: smaller batch of each epoch in a short run) is cheaper eager.
AUTO_RECORD_STEPS = 1000
#: ``auto`` compiles a recorded shape with Inductor (fully connected networks) when the run plans at least
#: this many examples in batches of that shape: a first compile (nothing cached) took 13 s for the digits
#: model and 24 s for 784-400-50 in a fresh process on a 2-core machine (3-7 s for a later graph in the
#: same process, about 2 s from Inductor's on-disk cache) and saved 5-20 microseconds per example over the
#: recorded graph (benchmarks/BENCHMARKS.md), so two million examples (a 50-epoch MNIST run, at any
#: batch size) repay a first compile; the README's digits run (0.28 million) keeps the recorded graph.
AUTO_COMPILE_EXAMPLES = 2_000_000

# The Pyro modules whose value-reading helpers are swapped while recording.
_PYRO_ELBO_MODULES = ("pyro.infer.trace_elbo", "pyro.infer.trace_mean_field_elbo", "pyro.infer.traceenum_elbo")


def refusal(vae, elbo: str, distributed=None, varies: bool = False) -> str | None:
    """Why a run cannot use the recorded step (one line), or None when it can."""
    if not hasattr(vae, "named_trainable_parameters") or not isinstance(vae, torch.nn.Module):
        return "the programs are not a ppl_vae.VAE (their parameters are not known before they run)"
    if elbo == "iwae":
        return "iwae's RenyiELBO has no differentiable loss to record"
    if distributed is not None:
        return "data-parallel training runs eager steps (DistributedDataParallel hooks the backward pass)"
    if varies:
        return "the KL schedule changes beta at every step, and beta is a constant of the recorded graph"
    return None


@contextlib.contextmanager
def traceable_pyro():
    """Pyro's ELBO modules with ``torch_item`` and ``warn_if_nan`` that keep tensors as tensors (recording only)."""
    import importlib

    def keep(value):  # eagerly a Python float (a double): the value sums to the same double here
        return value.detach().double() if torch.is_tensor(value) else value

    def no_check(value, *args, **kwargs):
        return value

    saved = []
    for name in _PYRO_ELBO_MODULES:
        module = importlib.import_module(name)
        for attr, replacement in (("torch_item", keep), ("warn_if_nan", no_check)):
            if hasattr(module, attr):
                saved.append((module, attr, getattr(module, attr)))
                setattr(module, attr, replacement)
    try:
        yield
    finally:
        for module, attr, original in saved:
            setattr(module, attr, original)


class _LossOf(torch.nn.Module):
    """``elbo.differentiable_loss(vae.model, vae.guide, x, **kwargs)`` as a module holding ``vae``
    (so that ``torch.func.functional_call`` can hand it parameters and buffers)."""

    def __init__(self, vae, elbo):
        super().__init__()
        self.vae = vae
        self.elbo = elbo

    def forward(self, x, kwargs):
        return self.elbo.differentiable_loss(self.vae.model, self.vae.guide, x, **kwargs)


@dataclass
class Graph:
    """One recorded step for one key (batch shape and step arguments): ``run(params, buffers, x,
    tensors) -> (loss, gradients)``."""

    run: object
    record_seconds: float
    compiled: bool = False
    compile_seconds: float | None = None
    calls: int = 0
    eager: object = None  # the recorded graph before torch.compile
    unused: tuple[int, ...] = ()  # trainable parameters without a gradient (None, as eagerly)


class CapturedLoss:
    """The loss and gradients of one step from a graph recorded once per key (see the module docstring).

    Args:
        vae: the :class:`ppl_vae.VAE`.
        elbo: the Pyro ELBO object (``differentiable_loss``).
        trainable: ``(name, parameter)`` pairs, in the optimizer's order: the gradients come back in it.
        mode: ``"trace"``, ``"on"`` or ``"auto"``.
        log: ``message -> None``, for the one line that says why a step falls back or compiles.
    """

    def __init__(self, vae, elbo, trainable, mode: str, log=None):
        self.vae, self.elbo, self.mode = vae, elbo, mode
        self.log = log or (lambda message: None)
        self.trainable = [p for _, p in trainable]
        module_names = {id(p): "vae." + n for n, p in vae.named_parameters()}
        missing = [name for name, p in trainable if id(p) not in module_names]
        self.refused = f"parameters outside the VAE's modules: {', '.join(missing[:3])}" if missing else None
        self.param_names = list(module_names.values())
        self.params = [p for p in vae.parameters()]
        self.buffer_names = ["vae." + n for n, _ in vae.named_buffers()]
        self.buffers = [b for _, b in vae.named_buffers()]  # the graph's inputs, in place of the modules'
        self.graphs: dict[tuple, Graph | None] = {}
        #: ``{rows: steps}``: the steps the whole run plans per batch size, for ``auto``'s decisions
        self.planned: dict[int, int] | None = None
        self.on_device = next(iter(self.params)).device.type if self.params else "cpu"

    # -- the step -------------------------------------------------------------------------------------

    def __call__(self, x: torch.Tensor, kwargs: dict) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor] | None:
        """``(loss, gradients of trainable (None where the loss does not reach one), finite)`` from the
        recorded graph, or None: take an eager step.
        ``finite``: a boolean tensor, whether every gradient is finite (the check of
        :meth:`ppl_vae.infer.optim.GuardedAdam.step`, inside the graph)."""
        if self.refused is not None:
            return None
        key = _key(x, kwargs, self.vae.training)
        if key not in self.graphs:
            if self.mode == "auto" and not self._record_wanted(x.shape[0]):
                self.graphs[key] = None  # too few steps of this shape to repay recording it
            elif len([g for g in self.graphs.values() if g is not None]) >= MAX_GRAPHS:
                self.graphs[key] = None
                self.log(f"compile: more than {MAX_GRAPHS} batch shapes; the others run eager steps")
            else:
                self.graphs[key] = self._record(x, kwargs)
        graph = self.graphs[key]
        if graph is None:
            return None
        tensors = {k: v for k, v in kwargs.items() if torch.is_tensor(v)}
        inputs = (self.params, self.buffers, x, tensors)
        with torch.no_grad():
            if graph.compiled and graph.compile_seconds is None:
                loss, grads = self._first_compiled_call(graph, inputs)
            else:
                loss, grads = graph.run(*inputs)
        graph.calls += 1
        finite, grads = grads[-1], list(grads[:-1])
        for k in graph.unused:
            grads[k] = None  # eagerly such a parameter has no gradient, and Adam leaves it alone
        return loss, grads, finite

    # -- recording ------------------------------------------------------------------------------------

    def _record(self, x: torch.Tensor, kwargs: dict) -> Graph | None:
        from torch.fx.experimental.proxy_tensor import make_fx

        static = {k: v for k, v in kwargs.items() if not torch.is_tensor(v)}
        tensors = {k: v for k, v in kwargs.items() if torch.is_tensor(v)}
        wrapper = _LossOf(self.vae, self.elbo)
        trainable = {id(p) for p in self.trainable}
        grad_index = [i for i, p in enumerate(self.params) if id(p) in trainable]
        order = {id(p): i for i, p in enumerate(self.params)}
        out_order = [grad_index.index(order[id(p)]) for p in self.trainable]

        unused: list[int] = []  # trainable parameters the loss does not reach: no gradient, as eagerly

        def joint(params, buffers, x, tensors):
            leaves = [params[i].requires_grad_(True) for i in grad_index]
            state = dict(zip(self.param_names, params)) | dict(zip(self.buffer_names, buffers))
            with torch.enable_grad():
                loss = torch.func.functional_call(wrapper, state, (x, static | tensors))
                grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            grads = [grads[j] for j in out_order]
            unused[:] = [k for k, g in enumerate(grads) if g is None]
            grads = [torch.zeros_like(leaves[out_order[k]]) if g is None else g for k, g in enumerate(grads)]
            finite = torch.isfinite(torch.stack([g.sum() for g in grads])).all()  # GuardedAdam's check
            # Eagerly the loss is a float32 tensor (a double sum plus a float32 zero): the same rounding here.
            return loss.detach().to(params[0].dtype), [*grads, finite]

        start = time.perf_counter()
        try:
            with (
                traceable_pyro(),
                pyro.validation_enabled(False),
                _registration_off(self.vae),
                poutine.trace(param_only=True) as params_read,
            ):
                gm = make_fx(joint, tracing_mode="fake", _allow_non_fake_inputs=True)(
                    [p.detach() for p in self.params], self.buffers, x, tensors
                )
        except Exception as error:  # any failure to record means eager steps, said in one line
            self._refuse(f"recording the step failed ({type(error).__name__}: {_first_line(error)})")
            return None
        problem = _foreign_tensors(gm, params_read.trace)
        if problem is not None:
            self._refuse(problem)
            return None
        graph = Graph(run=gm, record_seconds=time.perf_counter() - start, unused=tuple(unused))
        if self.mode == "on" or (self.mode == "auto" and self._compile_wanted(x.shape[0])):
            self._compile(graph)
        return graph

    def _refuse(self, reason: str) -> None:
        self.refused = reason
        self.log(f"compile: eager steps, because {reason}")

    # -- compiling ------------------------------------------------------------------------------------

    def _record_wanted(self, rows: int) -> bool:
        """``auto``: does the run plan at least :data:`AUTO_RECORD_STEPS` steps of ``rows`` examples?
        (Steps unknown: yes.)"""
        return self.planned is None or self.planned.get(rows, 0) >= AUTO_RECORD_STEPS

    def _compile_wanted(self, rows: int) -> bool:
        """``auto``: fully connected networks, and at least :data:`AUTO_COMPILE_EXAMPLES` examples planned
        in batches of ``rows``? (Steps unknown: no.)"""
        if self.planned is None or getattr(self.vae, "network", "mlp") != "mlp":
            return False
        return self.planned.get(rows, 0) * rows >= AUTO_COMPILE_EXAMPLES

    def _compile(self, graph: Graph) -> None:
        """Hand ``graph`` to ``torch.compile``; the compile itself happens at its first call."""
        options = {"fallback_random": True}  # the eager draws, from torch's generator
        if self.on_device == "cuda":
            # mode="reduce-overhead": the static step replayed as a CUDA graph. The parameters keep their
            # addresses (Adam updates them in place), so they are marked static and not copied in at
            # every replay; x and the step's tensors are. The gradients are the graph's outputs, which the
            # next replay overwrites: the optimizer reads them before that. Not measured here (no GPU).
            options["triton.cudagraphs"] = True
            for param in self.params:
                torch._dynamo.mark_static_address(param)
        graph.eager, graph.compiled = graph.run, True
        graph.run = torch.compile(graph.run, fullgraph=True, dynamic=False, options=options)

    def _first_compiled_call(self, graph: Graph, inputs: tuple):
        start = time.perf_counter()
        # Inductor imports torch's C++-extension helper, which warns that a CPU-only machine has no CUDA.
        quiet = logging.getLogger("torch.utils.cpp_extension")
        level = quiet.level
        quiet.setLevel(max(level, logging.ERROR))
        try:
            out = graph.run(*inputs)
        except Exception as error:  # e.g. no C++ compiler: the recorded graph still runs
            self.log(f"compile: torch.compile failed ({type(error).__name__}: {_first_line(error)}); recorded steps")
            graph.run, graph.compiled = graph.eager, False
            return graph.run(*inputs)
        finally:
            quiet.setLevel(level)
        graph.compile_seconds = time.perf_counter() - start
        return out

    def describe(self) -> dict:
        """What ran, for the run's record: ``{"graphs": [{"shape", "compiled", "record_seconds",
        "compile_seconds", "steps"}]}`` (``compile_seconds``: the first compiled step, compile included)."""
        return {
            "graphs": [
                {
                    "shape": list(key[0]),
                    "compiled": graph.compiled,
                    "record_seconds": round(graph.record_seconds, 3),
                    "compile_seconds": None if graph.compile_seconds is None else round(graph.compile_seconds, 3),
                    "steps": graph.calls,
                }
                for key, graph in self.graphs.items()
                if graph is not None
            ]
        }


@contextlib.contextmanager
def _registration_off(vae):
    vae._pyro_registration = False
    try:
        yield
    finally:
        vae._pyro_registration = True


def _key(x: torch.Tensor, kwargs: dict, training: bool) -> tuple:
    parts = []
    for name, value in sorted(kwargs.items()):
        if torch.is_tensor(value):
            parts.append((name, tuple(value.shape), value.dtype, value.device))
        else:
            parts.append((name, repr(value)))
    return (tuple(x.shape), x.dtype, x.device, tuple(parts), training)


def _foreign_tensors(gm, params_read) -> str | None:
    """Why the recorded graph cannot stand for the programs, or None: ``pyro.param`` sites read (their
    updates would not reach the graph), or a trainable tensor that is not a VAE parameter baked in."""
    sites = [name for name, node in params_read.nodes.items() if node["type"] == "param"]
    if sites:
        return f"the programs read pyro.param sites ({', '.join(sites[:3])}) that the recorded graph would freeze"
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = getattr(gm, node.target, None)
            if torch.is_tensor(value) and (value.requires_grad or isinstance(value, torch.nn.Parameter)):
                return "the programs use a trainable tensor that is not a parameter of the VAE's modules"
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else "")[:200]
