"""The native-kernel realization (see :mod:`sgcnn.deploy.fast` and
:mod:`sgcnn.deploy._native`): gather-free, fp32 NCHW on the CPU."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from sgcnn.deploy import _native
from sgcnn.deploy._fast_base import LayerSpec, _arena_buffer, _balanced_split, _Fast
from sgcnn.errors import SgcnnError


class NativeGroupConv2d(_Fast):
    """The gather-free native kernel (:mod:`sgcnn.deploy._native`), fp32 NCHW on CPU.

    Each group's filters are cut into chunks of at most ``rows`` (balanced sizes); a chunk's
    packed weights are ``[entries, filters]`` with entries the group's (channel, ky, kx)
    triples, so one weight broadcast per filter meets a vector of output positions. ``block``
    is the number of 16-position runs per work item and ``rows`` the most filters per chunk
    (taller chunks reuse each loaded input vector more; both tuned per layer).
    """

    realization = "native"
    output_in_arena = True
    tile = 0  # the kernel forward calls: direct (0) or Winograd F(tile x tile, 3x3)
    # (block, rows) pairs convert measures. Taller chunks (rows up to 16) gained at most ~10%
    # on a few ResNet-50 layers: not worth the extra tuning time by default.
    settings_to_try = ((4, 6), (8, 6), (12, 6))

    def __init__(self, spec: LayerSpec, block: int = 8, rows: int = 6) -> None:
        super().__init__(spec)
        if not 1 <= rows <= _native.RMAX:
            raise ValueError(f"rows must be in 1..{_native.RMAX}")
        if spec.kind != "conv":
            raise ValueError("the native kernel realizes convolutions only")
        if spec.weight.dtype != torch.float32:
            raise ValueError("the native kernel computes in float32 only")
        if not 1 <= block <= 12:
            raise ValueError("block must be in 1..12")
        w = spec.weight
        cg = w.shape[1]
        kh, kw = w.shape[2:]
        taps = torch.cartesian_prod(torch.arange(kh), torch.arange(kw)).reshape(-1, 2)
        per_group = []
        for filters, channels in spec.groups:
            ent = torch.cat(
                [channels.repeat_interleave(len(taps))[:, None], taps.repeat(len(channels), 1)],
                1,
            )
            wg = w[filters][:, channels % cg].reshape(len(filters), -1)  # [n_j, K_j * taps]
            per_group.append((filters, ent, wg))
        self._pack(spec, per_group, block, rows)

    def _pack(self, spec: LayerSpec, per_group, block: int, rows: int) -> None:
        """Store the kernel's tensors from ``(filters, entries, weights)`` per self-group,
        ``weights`` with the filters first (``[filters, entries]``, or ``[filters, entries,
        points]`` for Winograd): each group is cut into chunks of at most ``rows`` filters whose
        weights are packed with the dimensions reversed (``[entries, filters]``, ``[points,
        entries, filters]``), so that one weight broadcast per filter meets a vector of
        outputs."""
        entries, packed, chunks, rowmap = [], [], [], []
        n_entries = n_weights = 0
        for filters, ent, wg in per_group:
            entries.append(ent)
            for part in _balanced_split(torch.arange(len(filters)), rows):
                block_w = wg[part].permute(*range(wg.dim() - 1, -1, -1)).float().contiguous()
                chunks.append([len(ent), n_entries, n_weights, len(part), len(rowmap)])
                packed.append(block_w.flatten())
                rowmap.extend(filters[part].tolist())
                n_weights += block_w.numel()
            n_entries += len(ent)
        self.register_buffer("entries", torch.cat(entries).to(torch.int32).contiguous())
        self.register_buffer("chunks", torch.tensor(chunks, dtype=torch.long))
        self.register_buffer("rowmap", torch.tensor(rowmap, dtype=torch.long))
        self.weights = nn.Parameter(torch.cat(packed).contiguous(), requires_grad=False)
        self.bias = nn.Parameter(spec.bias.clone().contiguous(), requires_grad=False)
        self.block = block
        self.rows = rows
        lanes = _native.lanes() if _native.available() else 16
        self._vectors = block * 16 // lanes  # the kernel's block: vectors of `lanes` floats
        # Set by convert's memory planning (both exact, see NativeGroupConv2d.forward):
        self.out_pad = (0, 0)  # write a zero border of this size around each output plane
        self.input_padded = False  # x already carries this layer's zero padding
        self.accumulate = False  # add into the residual tensor in place

    @classmethod
    def from_spec(cls, spec: LayerSpec, block: int = 8, rows: int = 6) -> NativeGroupConv2d:
        return cls(spec, block, rows)

    @staticmethod
    def supports(spec: LayerSpec, device: torch.device | str = "cpu") -> bool:
        """Whether this realization can run ``spec`` on ``device``."""
        return (
            spec.kind == "conv"
            and torch.device(device).type == "cpu"
            and spec.weight.dtype == torch.float32
            and _native.available()
        )

    def _executed_per_position(self) -> int:
        return int((self.chunks[:, 0] * self.chunks[:, 3]).sum())

    def _dense_weight(self) -> torch.Tensor:
        dense = self.weights.new_zeros(self._weight_shape).cpu()
        cg = self._weight_shape[1]
        entries, weights = self.entries.long().cpu(), self.weights.detach().cpu()
        for ne, e0, w0, rows, r0 in self.chunks.tolist():
            ent = entries[e0 : e0 + ne]
            filters = self.rowmap[r0 : r0 + rows].cpu()
            w = weights[w0 : w0 + ne * rows].view(ne, rows).t()  # [rows, entries]
            dense[filters[:, None], ent[:, 0] % cg, ent[:, 1], ent[:, 2]] = w
        return dense

    def geometry(self) -> _native.Geometry:
        """What the kernel needs to know besides the tensors (see :class:`_native.Geometry`)."""
        return _native.Geometry(
            filters=self.out_features,
            kernel=self.kernel_size,
            stride=self.stride,
            padding=(0, 0) if self.input_padded else self.padding,
            dilation=self.dilation,
            block=self._vectors,
            border=self.out_pad,
            input_padded=self.input_padded,
        )

    def release_views(self) -> None:
        """Drop the call plans (rebuilt on the next call): each keeps its last output, which
        may be a view of an arena buffer (see :func:`sgcnn.deploy._arena.release`)."""
        plans = self.__dict__.get("_plans")
        if plans is not None:
            plans.clear()

    def _plan(self, x: torch.Tensor) -> _native.Plan:
        """The kernel's :class:`_native.Plan` for ``x``'s shape and the current geometry
        settings, built on the first call and kept (measured: about 8 us less per call;
        ResNet-50 makes 53 such calls per forward pass)."""
        plans = self.__dict__.get("_plans")
        if plans is None:
            plans = self.__dict__["_plans"] = _native.Plans()
        key = (x.shape, x.dtype, x.is_cpu, self.out_pad, self.input_padded, self._vectors)
        plan = plans.get(key)
        if plan is None:  # checked once per input shape and type: the kernel trusts the plan
            self._check_input(x)
            _check_float32_cpu(self, x)
            if len(plans) > 16:  # many input shapes: start over rather than grow
                plans.clear()
            plan = plans[key] = _native.Plan(self.geometry(), x.shape)
        return plan

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``relu?(conv(x) + bias + residual?)``.

        With ``input_padded``, ``x`` is the previous layer's output written with a zero border
        of this layer's padding, so the convolution runs unpadded on it; with ``out_pad`` the
        output carries such a border for the next layer; with ``accumulate`` the result is
        written into ``residual`` (which convert only allows where nothing reads it later).
        """
        params, buffers = self._parameters, self._buffers  # (faster than attribute lookups)
        args = (buffers["entries"], params["weights"], buffers["chunks"], buffers["rowmap"])
        args += (params["bias"],)
        # Plain tensors: call the kernel directly, through the call plan of this input shape
        # (about 15 us of Python a call); anything else (fake or functional tensors of
        # torch.export, torch.jit.trace, a dispatch mode such as FlopCounterMode) goes through
        # the registered operators, which tracers record.
        # An input that needs a gradient also takes the operators: the kernels have no
        # backward pass, and a backward through the operator fails loudly where a direct call
        # would silently cut the graph.
        symbolic = isinstance(x, torch.fx.Proxy)  # fx tracing: no values to branch on
        grad = (
            not symbolic
            and torch.is_grad_enabled()
            and (x.requires_grad or (residual is not None and residual.requires_grad))
        )
        if not grad and _plain(x, residual):
            plan = self._plan(x)
            # (a channels-last residual, from a dense layer of a channels-last conversion,
            # is added out of place)
            if self.accumulate and residual is not None and residual.is_contiguous():
                _native.accumulate_(residual, x, *args, plan.geo, self.relu, self.tile, plan)
                return residual
            buffer = _arena_buffer(self, x, plan.numel + _native.SLACK)
            return _native.conv2d(
                x, *args, residual, plan.geo, self.relu, self.tile, plan, buffer
            )  # fmt: skip
        _refuse_onnx_export(self)
        self._check_input(x)
        _check_float32_cpu(self, x)
        geo = self.geometry()
        name = _native.OPERATORS[self.tile]
        in_place = symbolic or (not grad and residual is not None and residual.is_contiguous())
        if self.accumulate and residual is not None and in_place:
            op = getattr(torch.ops.sgcnn, f"{name}_accumulate_")
            op(residual, x, *args, *_native.op_args(geo), self.relu)
            return residual
        op = getattr(torch.ops.sgcnn, name)
        return op(x, *args, residual, *_native.op_args(geo), self.relu)

    def extra_repr(self) -> str:
        extra = []
        if self.out_pad != (0, 0):
            extra.append(f"out_pad={self.out_pad}")
        if self.input_padded:
            extra.append("input_padded=True")
        if self.accumulate:
            extra.append("accumulate=True")
        return ", ".join(
            [
                super().extra_repr(),
                f"groups={len(self._groups)}",
                f"block={self.block}",
                *extra,
            ]
        )


def _plain(*tensors) -> bool:
    """Plain eager tensors, no dispatch mode, no tracer: the native kernels may be called
    directly (``torch.jit.trace`` would not see a direct call)."""
    return (
        all(t is None or type(t) is torch.Tensor for t in tensors)
        and _get_current_dispatch_mode() is None
        and not torch.jit.is_tracing()
    )


def _check_float32_cpu(module: nn.Module, x: torch.Tensor) -> None:
    """Refuse an input the native kernel would misread: it computes float32 on the CPU."""
    if isinstance(x, torch.fx.Proxy):
        return
    if x.dtype != torch.float32 or not x.is_cpu:
        raise SgcnnError(
            f"{type(module).__name__} runs sgcnn's native kernel, which computes float32 on "
            f"the CPU; got a {str(x.dtype).removeprefix('torch.')} input on {x.device}. Feed "
            "float32 CPU inputs, or convert again with an example of that dtype and device "
            "(sgcnn.convert(model, example)), which picks realizations that run there"
        )


def _refuse_onnx_export(module: nn.Module) -> None:
    """The native kernels have no ONNX form: say what to do instead of failing deep inside
    the exporter."""
    if torch.onnx.is_in_onnx_export():
        raise SgcnnError(
            f"{type(module).__name__} runs sgcnn's native kernel, which ONNX cannot express; "
            'export with sgcnn.export(model, path, x, format="onnx") (or `sgcnn export --format '
            "onnx`), which realizes every layer with standard operators"
        )
