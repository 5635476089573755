"""Optimizers whose update rule is written once with the op-building API, so the same math runs eagerly
(`optimizer.step()` on Tensors) and as graph nodes (`graphgpt.compile(..., optimizer=...)`).

SGD (momentum, Nesterov, L2 weight decay), Adam and AdamW follow torch.optim's semantics: betas, eps, bias
correction, L2 (Adam) or decoupled (AdamW) weight decay. Optional global-norm gradient clipping, as
torch.nn.utils.clip_grad_norm_, runs before the update.

A learning-rate schedule (warmup, cosine decay) sets `optimizer.lr_scale` before each step: the rate used is
lr * lr_scale. The scale is a state tensor ('optimizer.lr_scale') that a compiled step reads at every run, so it
changes per step without recompiling, while lr, a constant of the compiled update, stays the run's peak rate.

    opt = graphgpt.optim.Adam(model.named_parameters(), lr=3e-4)
    loss.backward(); opt.step(); opt.zero_grad()

An elementwise update runs over runs of parameters joined into one vector, and stores their state joined too:
`opt.joined` holds one vector per slot and run, `opt.state` each parameter's state as a view of it (what
state_dict saves), so a compiled update reads and writes the vectors in place.
"""

from __future__ import annotations

from operator import attrgetter, is_
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from graphgpt.passes.joined_runs import JOINED_ELEMENTS, joined_runs
from graphgpt.passes.optimizer_update import STATE_PREFIX, UpdateRule

from .tensor import Parameter, Tensor
from .tracing import no_grad

# A tensor's array without .data's check for a traced value (a contextvar lookup, ~0.1 us): the optimizer's state
# tensors hold arrays, never traced values.
_DATA = attrgetter("_data")


def hyperparameter(name: str, value, *, positive: bool = False) -> float:
    """`value` as a float, or ValueError saying what was expected: a finite number (not a bool or a string),
    non-negative (positive if asked). NaN and infinities are refused here rather than training to NaN."""
    wanted = "positive" if positive else "non-negative"
    number = float(value) if isinstance(value, (int, float, np.integer, np.floating)) and \
        not isinstance(value, bool) else None
    if number is None or not np.isfinite(number) or (number <= 0 if positive else number < 0):
        raise ValueError(f"{name} must be {wanted}, got {value!r} (a finite number is expected)")
    return number


class Optimizer:
    """Base class: holds hyperparameters and state; subclasses define `slots` and `update_parameter`."""

    slots: tuple[str, ...] = ()  # per-parameter state tensors, e.g. ("exp_avg", "exp_avg_sq")
    # State a schedule sets before each step rather than state the update carries forward: state_dict() leaves
    # it out (the schedule is a function of the saved step), so checkpoints hold what they always held.
    scheduled = ("lr_scale",)
    # See updates_elementwise: True lets update() run over all parameters joined into one vector.
    elementwise_update = False

    def __init__(self, params: Union[None, Iterable] = None, *, lr: float, clip_grad_norm: Optional[float] = None):
        self.lr = hyperparameter("learning rate", lr, positive=True)
        self.clip_grad_norm = (None if clip_grad_norm is None
                               else hyperparameter("clip_grad_norm", clip_grad_norm, positive=True))
        self.named_params: list[tuple[str, Parameter]] = []
        self.state: dict[str, Tensor] = {"lr_scale": Tensor(np.ones((), np.float32))}
        # A run of parameters' state joined into one vector per slot (_join_state), by state name; the members
        # of each run by its name; (state name, tensor, its view of the vector) of every member.
        self.joined: dict[str, Tensor] = {}
        self._joined_members: dict[str, tuple[str, ...]] = {}
        self._joined_views: list[tuple[str, Tensor, np.ndarray]] = []
        self._joined_check: tuple[tuple, tuple, tuple] = ((), (), ())  # the same as three tuples, for the check
        if params is not None:
            self.bind(params)

    # ---- binding parameters and state -----------------------------------------------------------------------
    def bind(self, params: Iterable) -> "Optimizer":
        """Attach the parameters to optimise: Parameters, or (name, Parameter) pairs such as
        model.named_parameters(). State is created (zeros) for any parameter that has none yet."""
        items = list(params)
        named = [item if isinstance(item, tuple) else (str(index), item) for index, item in enumerate(items)]
        if not named:
            raise ValueError("the optimizer was given no parameters")
        self.named_params = named
        dtype = named[0][1].dtype
        if self.state["lr_scale"].dtype != dtype:  # a float64 model: its update reads a float64 scale
            self.state["lr_scale"] = Tensor(self.state["lr_scale"].data, dtype=dtype)
        self.state.setdefault("step", Tensor(np.zeros(()), dtype=dtype))
        for name, parameter in named:
            for slot in self.slots:
                self.state.setdefault(f"{slot}.{name}", Tensor(np.zeros(parameter.shape), dtype=parameter.dtype))
        self._join_state()
        return self

    def _join_state(self) -> None:
        """Store each slot of a run of parameters (_joined_runs) as one vector, `joined[f"{slot}.{run name}"]`,
        the parameters' own state tensors in `state` becoming views of it. A compiled update then reads and
        writes the vector in place (the `graphgpt train` GPT's combine graph: 2 joins of 117K elements and 74
        copies back fewer per step), where it would join copies of the parameters' state and cut its results
        back apart at every step. The values are kept: a second bind with the same runs changes nothing."""
        runs = self._joined_runs([parameter for _, parameter in self.named_params]) if self.slots else []
        members = {_run_name(names): names for names in (tuple(self.named_params[index][0] for index in run)
                                                         for run in runs if len(run) > 1)}
        if members == self._joined_members:
            self.gather_joined_state()
            return
        parameters = dict(self.named_params)
        for names in members.values():
            for name in names:
                for slot in self.slots:
                    _check_state(f"{slot}.{name}", self.state.get(f"{slot}.{name}"), parameters[name].shape,
                                 parameters[name].dtype)
        self.joined, self._joined_members, self._joined_views = {}, members, []
        for run_name, names in members.items():
            for slot in self.slots:
                tensors = [self.state[f"{slot}.{name}"] for name in names]
                vector = Tensor(np.concatenate([tensor.data.reshape(-1) for tensor in tensors]),
                                dtype=parameters[names[0]].dtype)
                self.joined[f"{slot}.{run_name}"] = vector
                offset = 0
                for name, tensor in zip(names, tensors):
                    view = vector.data[offset:offset + tensor.data.size].reshape(tensor.shape)
                    tensor.data = view
                    self._joined_views.append((f"{slot}.{name}", tensor, view))
                    offset += view.size
        self._joined_check = tuple(map(tuple, zip(*self._joined_views))) or ((), (), ())

    def gather_joined_state(self) -> None:
        """Keep each joined vector the state of its parameters: a state tensor replaced since the last step
        (`optimizer.state[name] = ...`, or its .data assigned) is copied into its place in the vector and made a
        view of it, so the next update, eager or compiled, reads it and writes its new value there. One of another
        shape or dtype than its parameter's is refused (ValueError), as a compiled run refuses a changed type."""
        names, tensors, views = self._joined_check
        if all(map(is_, map(self.state.get, names), tensors)) and all(map(is_, map(_DATA, tensors), views)):
            return  # checked at every step: C-level loops, ~3 us for the 74 of the `graphgpt train` GPT
        state = self.state
        for position, (name, tensor, view) in enumerate(self._joined_views):
            current = state.get(name)
            if current is tensor and current.data is view:
                continue
            _check_state(name, current, view.shape, view.dtype)
            view[...] = current.data
            current.data = view
            self._joined_views[position] = (name, current, view)
        self._joined_check = tuple(map(tuple, zip(*self._joined_views))) or ((), (), ())

    def _update_state(self) -> dict[str, Tensor]:
        """The state update() may read, by name: each parameter's, the runs' joined vectors, and the shared ones."""
        return {**self.state, **self.joined}

    def state_tensor(self, name: str) -> Optional[Tensor]:
        """The state tensor of a state name: a parameter's (`exp_avg.blocks.0.ln1.gamma`), a run's joined vector
        (`exp_avg.<token_embedding.weight to lm_head.weight>`), or the shared ones (`step`); None if none."""
        return self.joined.get(name) if name in self.joined else self.state.get(name)

    @property
    def hyperparameters(self) -> dict:
        return {"lr": self.lr, "clip_grad_norm": self.clip_grad_norm}

    @property
    def lr_scale(self) -> float:
        """The factor of lr the next step uses (1.0 unless a schedule set it)."""
        return float(self.state["lr_scale"].data)

    @lr_scale.setter
    def lr_scale(self, value: float) -> None:
        # Written in place: a compiled step holds this very tensor and reads it at its next run.
        self.state["lr_scale"].data[...] = hyperparameter("lr_scale", value)

    # ---- the math, written once -----------------------------------------------------------------------------
    def update_parameter(self, parameter, gradient, state: dict, step, lr):
        """New value of one parameter and of its state slots, given its gradient, the new step count and the
        learning rate of this step (lr * lr_scale, a handle)."""
        raise NotImplementedError

    def update(self, names: Sequence[str], parameters: Sequence, gradients: Sequence,
               state: dict) -> tuple[list, dict]:
        """New values of the parameters `names` (those with a gradient: as torch.optim, a parameter the loss
        never reached is left alone, weight decay included) and of the state (handles: Tensors eagerly, Symbols
        when compiled).

        Where the update is elementwise (updates_elementwise), runs of parameters (_joined_runs) are joined into
        one vector each, with their gradients and state slots, and the update runs once over each, its results cut
        back apart: a few passes over long vectors instead of a dozen short ones per parameter (a compiled step's
        optimizer was 227 kernel calls for the 37 parameters of `graphgpt train`'s GPT, now 18, and the views
        flattening and cutting). A run whose slots `state` holds joined already (its `joined` vectors, for the
        very parameters of the run) reads them as they are, and its new slots are returned joined, by the same
        names. Each element goes through the same arithmetic either way; only the clipping norm's sum is taken
        over each vector."""
        names, parameters, gradients = list(names), list(parameters), list(gradients)
        runs = self._joined_runs(parameters)
        if all(len(run) == 1 for run in runs):
            return self._update_each(names, parameters, gradients, state)
        run_names = [names[run[0]] if len(run) == 1 else _run_name([names[index] for index in run]) for run in runs]
        stored = {run_name for run, run_name in zip(runs, run_names) if len(run) > 1
                  and self._joined_members.get(run_name) == tuple(names[index] for index in run)
                  and all(f"{slot}.{run_name}" in state for slot in self.slots)}
        run_state = dict(state)
        for run, run_name in zip(runs, run_names):
            if len(run) > 1 and run_name not in stored:
                for slot in self.slots:
                    run_state[f"{slot}.{run_name}"] = _joined([state[f"{slot}.{names[index]}"] for index in run])
        new_runs, new_run_state = self._update_each(run_names, _per_run(runs, parameters),
                                                    _per_run(runs, gradients), run_state)
        slot_keys = {f"{slot}.{run_name}" for slot in self.slots for run_name in run_names}
        new_state = {key: value for key, value in new_run_state.items() if key not in slot_keys}
        for run, run_name in zip(runs, run_names):
            for slot in self.slots:
                value = new_run_state[f"{slot}.{run_name}"]
                if len(run) == 1 or run_name in stored:
                    new_state[f"{slot}.{run_name}"] = value
                else:
                    new_state.update(zip((f"{slot}.{names[index]}" for index in run),
                                         _per_parameter([run], [value], parameters)))
        return _per_parameter(runs, new_runs, parameters), new_state

    @classmethod
    def updates_elementwise(cls) -> bool:
        """Whether update_parameter computes each element of the new parameter and slots from the same element
        of the parameter, gradient and slots alone, by the same arithmetic for every parameter (hyperparameters,
        step and learning rate being scalars): declared by `elementwise_update = True` in the class defining
        the update_parameter that runs, so a subclass that overrides it (a per-parameter norm, say) is updated
        parameter by parameter unless it declares the same."""
        owner = next(klass for klass in cls.__mro__ if "update_parameter" in vars(klass))
        return bool(vars(owner).get("elementwise_update", False))

    def _joined_runs(self, parameters: Sequence) -> list[list[int]]:
        """The parameters (positions) update() runs over together: where the update is elementwise, runs of
        consecutive parameters of one dtype and known sizes, each run at most JOINED_ELEMENTS long (a parameter
        that large alone: passes/joined_runs.py, the rule a split step's gradient buckets follow too); otherwise
        each parameter alone."""
        if not self.updates_elementwise():
            return [[index] for index in range(len(parameters))]
        return joined_runs(parameters, JOINED_ELEMENTS)

    def _update_each(self, names: list[str], parameters: list, gradients: list, state: dict) -> tuple[list, dict]:
        """update() parameter by parameter: the clipping norm over all the gradients, then update_parameter."""
        if self.clip_grad_norm is not None:
            total = sum(((g * g).sum() for g in gradients[1:]), (gradients[0] * gradients[0]).sum()).sqrt()
            coefficient = float(self.clip_grad_norm) / (total + 1e-6)
            scale = (coefficient < 1.0).where(coefficient, 1.0)
            gradients = [g * scale for g in gradients]
        step = state["step"] + 1.0
        lr = state["lr_scale"] * self.lr
        new_state = {"step": step}
        new_parameters = []
        for name, parameter, gradient in zip(names, parameters, gradients):
            slots = {slot: state[f"{slot}.{name}"] for slot in self.slots}
            new_parameter, new_slots = self.update_parameter(parameter, gradient, slots, step, lr)
            new_parameters.append(new_parameter)
            new_state.update({f"{slot}.{name}": value for slot, value in new_slots.items()})
        return new_parameters, new_state

    # ---- eager use --------------------------------------------------------------------------------------------
    def step(self) -> None:
        """Update every bound parameter in place from its .grad (eager training)."""
        if not self.named_params:
            raise RuntimeError("optimizer.step(): no parameters bound; pass them to the constructor")
        reached = [(name, parameter) for name, parameter in self.named_params if parameter.grad is not None]
        if not reached:
            raise RuntimeError("optimizer.step(): no parameter has a gradient; call loss.backward() first")
        self.gather_joined_state()
        with no_grad():
            parameters = [Tensor(parameter.data, dtype=parameter.dtype) for _, parameter in reached]
            gradients = [Tensor(parameter.grad, dtype=parameter.dtype) for _, parameter in reached]
            new_parameters, new_state = self.update([name for name, _ in reached], parameters, gradients,
                                                    self._update_state())
            for (_, parameter), new in zip(reached, new_parameters):
                np.copyto(parameter.data, new.data)
            for name, new in new_state.items():
                np.copyto(self.state_tensor(name).data, new.data)

    def zero_grad(self) -> None:
        for _, parameter in self.named_params:
            parameter.grad = None

    # ---- as graph nodes ---------------------------------------------------------------------------------------
    def update_rule(self) -> UpdateRule:
        """This optimizer as the compiler's optimizer pass takes it (passes/optimizer_update.py)."""
        if not self.named_params:
            raise RuntimeError("the optimizer has no parameters bound")
        return UpdateRule(type(self).__name__, tuple(name for name, _ in self.named_params),
                          {name: tensor.type for name, tensor in self._update_state().items()}, self.update)

    def state_tensors(self) -> dict[str, Tensor]:
        """State by the graph parameter name it is bound to ('optimizer.step', 'optimizer.exp_avg.<param>', a
        joined vector 'optimizer.exp_avg.<first param to last param>')."""
        return {STATE_PREFIX + name: tensor for name, tensor in self._update_state().items()}

    # ---- saving and restoring ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """{'type', 'hyperparameters', 'state': name -> array}; arrays are copies. The scheduled lr_scale is
        left out: whoever schedules sets it again before the next step."""
        return {"type": type(self).__name__, "hyperparameters": dict(self.hyperparameters),
                "state": {name: tensor.data.copy() for name, tensor in self.state.items()
                          if name not in self.scheduled}}

    def load_state_dict(self, saved: dict) -> None:
        """Restore state saved by state_dict(); refuses (changing nothing) a different optimizer type or
        missing, extra or mis-shaped state, naming them."""
        if saved.get("type") != type(self).__name__:
            raise ValueError(f"cannot load {saved.get('type')!r} optimizer state into {type(self).__name__}")
        state = saved.get("state", {})
        missing = sorted(set(self.state) - set(state) - set(self.scheduled))
        unexpected = sorted(set(state) - set(self.state))
        mismatched = [f"{name}: expected {list(self.state[name].shape)}, got {list(np.shape(state[name]))}"
                      for name in self.state if name in state and np.shape(state[name]) != self.state[name].shape]
        if missing or unexpected or mismatched:
            raise ValueError(f"cannot load optimizer state: missing {missing}, unexpected {unexpected}, "
                             f"mismatched {mismatched}")
        for name, tensor in self.state.items():
            if name in state:
                tensor.data[...] = np.asarray(state[name], dtype=tensor.dtype)


def _check_state(name: str, tensor, shape, dtype) -> None:
    """ValueError unless a parameter's state tensor has the parameter's shape and dtype."""
    if not isinstance(tensor, Tensor) or tensor.shape != tuple(shape) or tensor.dtype != dtype:
        got = f"shape {list(tensor.shape)} of {tensor.dtype}" if isinstance(tensor, Tensor) else type(tensor).__name__
        raise ValueError(f"optimizer state {name!r} must stay a tensor of shape {list(shape)} of {np.dtype(dtype)} "
                         f"(its parameter's), got {got}")


def _run_name(names: Sequence[str]) -> str:
    """A run of parameters by its first and last: '<token_embedding.weight to lm_head.weight>'."""
    return f"<{names[0]} to {names[-1]}>"


def _joined(handles: Sequence):
    """The handles (Tensors or graph Symbols) flattened and joined into one vector, in order."""
    flat = [handle.reshape(-1) for handle in handles]
    return flat[0].concat(*flat[1:], axis=0)


def _per_run(runs: list[list[int]], handles: Sequence) -> list:
    """One handle per run: a parameter's own when it runs alone, else the run's joined into one vector."""
    return [handles[run[0]] if len(run) == 1 else _joined([handles[index] for index in run]) for run in runs]


def _per_parameter(runs: list[list[int]], values: Sequence, like: Sequence) -> list:
    """_per_run undone: each run's value cut back into pieces of the sizes and shapes of its parameters in `like`
    (views: a slice and a reshape each)."""
    pieces = []
    for run, value in zip(runs, values):
        if len(run) == 1:
            pieces.append(value)
            continue
        start = 0
        for index in run:
            size = like[index].size
            pieces.append(value[start:start + size].reshape(like[index].shape))
            start += size
    return pieces


class SGD(Optimizer):
    """p -= lr * d, with d = g + weight_decay * p, through a momentum buffer when momentum > 0 (torch.optim.SGD
    with dampening 0)."""

    elementwise_update = True

    def __init__(self, params=None, *, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, clip_grad_norm: Optional[float] = None):
        momentum = hyperparameter("momentum", momentum)
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov = momentum, bool(nesterov)
        self.weight_decay = hyperparameter("weight_decay", weight_decay)
        self.slots = ("momentum_buffer",) if momentum else ()
        super().__init__(params, lr=lr, clip_grad_norm=clip_grad_norm)

    @property
    def hyperparameters(self) -> dict:
        return {**super().hyperparameters, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}

    def update_parameter(self, parameter, gradient, state, step, lr):
        direction = gradient + parameter * self.weight_decay if self.weight_decay else gradient
        if not self.momentum:
            return parameter - direction * lr, {}
        # A zero-initialised buffer makes the first step's buffer equal the gradient, as torch's does.
        buffer = state["momentum_buffer"] * self.momentum + direction
        direction = direction + buffer * self.momentum if self.nesterov else buffer
        return parameter - direction * lr, {"momentum_buffer": buffer}


class Adam(Optimizer):
    """torch.optim.Adam: moving averages of g and g^2 with bias correction; weight_decay adds L2 to g."""

    slots = ("exp_avg", "exp_avg_sq")
    decoupled_weight_decay = False
    elementwise_update = True

    def __init__(self, params=None, *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, clip_grad_norm: Optional[float] = None):
        try:
            self.betas = tuple(hyperparameter("betas", beta) for beta in betas)
        except (TypeError, ValueError):
            self.betas = ()
        if len(self.betas) != 2 or not all(beta < 1.0 for beta in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
        self.eps = hyperparameter("eps", eps)
        self.weight_decay = hyperparameter("weight_decay", weight_decay)
        super().__init__(params, lr=lr, clip_grad_norm=clip_grad_norm)

    @property
    def hyperparameters(self) -> dict:
        return {**super().hyperparameters, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay}

    def update_parameter(self, parameter, gradient, state, step, lr):
        beta1, beta2 = self.betas
        if self.weight_decay and self.decoupled_weight_decay:
            parameter = parameter * (1.0 - lr * self.weight_decay)
        elif self.weight_decay:
            gradient = gradient + parameter * self.weight_decay
        exp_avg = state["exp_avg"] * beta1 + gradient * (1.0 - beta1)
        exp_avg_sq = state["exp_avg_sq"] * beta2 + gradient * gradient * (1.0 - beta2)
        bias_correction1 = 1.0 - beta1 ** step
        bias_correction2 = 1.0 - beta2 ** step
        denominator = exp_avg_sq.sqrt() / bias_correction2.sqrt() + self.eps
        new_parameter = parameter - exp_avg / denominator * (lr / bias_correction1)
        return new_parameter, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay, p *= 1 - lr * weight_decay (default 0.01)."""

    decoupled_weight_decay = True

    def __init__(self, params=None, *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, clip_grad_norm: Optional[float] = None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         clip_grad_norm=clip_grad_norm)
