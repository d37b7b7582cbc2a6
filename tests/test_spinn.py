"""The batched SPINN encoder against the list-based reference, the reduce op's gradients, bad inputs."""

from __future__ import annotations

import random

import pytest
import torch

from rnnfast import functional
from rnnfast.data.trees import pad_transitions, random_transitions
from rnnfast.nn.spinn import SPINN, Tracker, TreeLSTMReduce
from rnnfast.nn.transitions import PAD, REDUCE, SHIFT
from rnnfast.ops.spinn import reference, spinn_encode
from tests.utils import assert_close, case_id

TOL = 1e-10


def _model(H, HT, predict=False, all_rows=False, seed=0):
    torch.manual_seed(seed)
    m = SPINN(H, HT, predict=predict, all_rows=all_rows).double()
    with torch.no_grad():
        for p in m.parameters():  # non-zero biases too, so a dropped bias cannot pass
            p.uniform_(-0.6, 0.6)
    return m


def _inputs(B, H, lens, seed, pad_left=True):
    rng = random.Random(seed)
    seqs = [random_transitions(n, rng) for n in lens]
    tr = pad_transitions(seqs)
    if not pad_left:  # PAD anywhere must be a no-op for the stack (the tracker still steps)
        for b, s in enumerate(seqs):
            tr[:, b] = PAD
            for t, a in enumerate(s):
                tr[t, b] = a
    g = torch.Generator().manual_seed(seed)
    N = max(lens + [1])
    buffers = (torch.rand(B, N, 2 * H, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    null = (torch.rand(B, 2 * H, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    return buffers, tr, null


def _compare(model, buffers, tr, null, lengths=None):
    """Outputs and gradients of every input and parameter: encoder vs the list-based reference."""
    out = model(buffers, tr, null, lengths=lengths, return_c=True)
    h, c = out[0], out[1]
    rh, rc, rl = reference.spinn(model, buffers, tr, null, lengths=lengths)
    assert_close("h", h, rh, TOL)
    assert_close("c", c, rc, TOL)
    g = torch.Generator().manual_seed(7)
    gh = torch.rand(h.shape, generator=g, dtype=h.dtype) - 0.5
    gc = torch.rand(c.shape, generator=g, dtype=c.dtype) - 0.5
    loss, ref_loss = (h * gh).sum() + (c * gc).sum(), (rh * gh).sum() + (rc * gc).sum()
    if model.predict:
        assert_close("logits", out[2], rl, TOL)
        gl = torch.rand(rl.shape, generator=g, dtype=rl.dtype) - 0.5
        loss, ref_loss = loss + (out[2] * gl).sum(), ref_loss + (rl * gl).sum()
    names = ["buffers", "null"] + [n for n, _ in model.named_parameters()]
    params = [buffers, null] + list(model.parameters())
    got = torch.autograd.grad(loss, params, allow_unused=True)
    want = torch.autograd.grad(ref_loss, params, allow_unused=True)
    for name, p, a, b in zip(names, params, got, want):
        # Unused inputs (e.g. null without a tracker and with complete parses) get zeros, not None.
        a = torch.zeros_like(p) if a is None else a
        b = torch.zeros_like(p) if b is None else b
        assert_close(f"grad {name}", a, b, TOL)


CASES = [
    dict(B=1, H=5, HT=None),
    dict(B=1, H=5, HT=4),
    dict(B=64, H=6, HT=None),
    dict(B=64, H=6, HT=5),
    dict(B=7, H=33, HT=3),
]


@pytest.mark.parametrize("all_rows", [False, True], ids=["reduce-rows", "all-rows"])
@pytest.mark.parametrize("case", CASES, ids=[case_id(**c) for c in CASES])
def test_encoder_matches_reference(case, all_rows):
    B, H, HT = case["B"], case["H"], case["HT"]
    rng = random.Random(B * 31 + H)
    lens = [rng.randint(1, 9) for _ in range(B)]  # ragged, including single-leaf sentences
    model = _model(H, HT, all_rows=all_rows)
    buffers, tr, null = _inputs(B, H, lens, seed=B + H)
    _compare(model, buffers, tr, null)


def test_encoder_pads_anywhere():
    """Right padding: PAD anywhere is a no-op for the stack (the tracker still steps)."""
    B, H = 9, 4
    lens = [3, 1, 5, 1, 2, 7, 2, 6, 4]
    model = _model(H, 3)
    buffers, tr, null = _inputs(B, H, lens, seed=3, pad_left=False)
    _compare(model, buffers, tr, null)


@pytest.mark.parametrize("B", [1, 12])
def test_predict_teacher_forced_and_greedy(B):
    H, HT = 5, 4
    rng = random.Random(B)
    lens = [rng.randint(1, 8) for _ in range(B)]
    model = _model(H, HT, predict=True, seed=B)
    buffers, tr, null = _inputs(B, H, lens, seed=B)
    _compare(model, buffers, tr, null)  # transitions given: followed, logits returned
    lengths = torch.tensor(lens)
    _compare(model, buffers, None, null, lengths=lengths)  # greedy, masked, with gradients
    with torch.no_grad():  # the no-grad path decodes on the device and returns directly
        h, c, logits = model(buffers, None, null, lengths=lengths, return_c=True)
    rh, rc, rl = reference.spinn(model, buffers, None, null, lengths=lengths)
    assert_close("h (no grad)", h, rh.detach(), TOL)
    assert_close("logits (no grad)", logits, rl.detach(), TOL)
    # The decoded transitions are always valid parses of each sentence.
    r, t = model.reduce, model.tracker
    weights = [r.left.weight, r.left.bias, r.right.weight, r.track.weight, *t.rnn.parameters(),
               t.transition.weight, t.transition.bias]  # fmt: skip
    with torch.no_grad():
        *_, predicted = spinn_encode(buffers, None, null, *weights, lengths=lengths)
    for b, n in enumerate(lens):
        col = predicted[:, b].tolist()
        assert col.count(SHIFT) == n and col.count(REDUCE) == n - 1, (b, col)


def test_spinn_encode_gradcheck():
    B, H, HT = 2, 2, 2
    model = _model(H, HT, predict=True)
    buffers, tr, null = _inputs(B, H, [3, 2], seed=5)
    r, t = model.reduce, model.tracker

    def f(buffers, null, w_l, b_l, w_r, w_t, w_ih, w_hh, b_ih, b_hh, w_tr, b_tr):
        h, c, logits, _ = spinn_encode(
            buffers, tr, null, w_l, b_l, w_r, w_t, w_ih, w_hh, b_ih, b_hh, w_tr, b_tr
        )
        return h, c, logits

    args = (buffers, null, r.left.weight, r.left.bias, r.right.weight, r.track.weight, *t.rnn.parameters(),
            t.transition.weight, t.transition.bias)  # fmt: skip
    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("HT", [None, 2], ids=["no-tracker", "tracker"])
def test_reduce_gradcheck_and_formula(HT):
    R, H = 3, 2
    m = TreeLSTMReduce(H, HT, backend="reference").double()
    g = torch.Generator().manual_seed(1)

    def r(*s):
        return (torch.rand(*s, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()

    h_l, c_l, h_r, c_r = r(R, H), r(R, H), r(R, H), r(R, H)
    h_t = r(R, HT) if HT else None
    h, c = m(h_l, c_l, h_r, c_r, h_t)
    lstm_in = m.left(h_l) + m.right(h_r) + (m.track(h_t) if HT else 0)
    a, i, f1, f2, o = lstm_in.chunk(5, 1)
    want_c = a.tanh() * i.sigmoid() + f1.sigmoid() * c_l + f2.sigmoid() * c_r
    assert_close("c", c, want_c, 1e-14)
    assert_close("h", h, o.sigmoid() * want_c.tanh(), 1e-14)
    w_t = m.track.weight if HT else None
    args = (h_l, c_l, h_r, c_r, m.left.weight, m.left.bias, m.right.weight, h_t, w_t)
    assert torch.autograd.gradcheck(lambda *a: functional.tree_lstm_reduce(*a, backend="reference"), args)


def test_tracker_is_an_lstm_cell_over_three_tops():
    H, HT, B = 4, 3, 5
    t = Tracker(H, HT, predict=True).double()
    x = [torch.rand(B, H, dtype=torch.float64) for _ in range(3)]
    (h, c), logits = t(*x)
    h2, c2 = t.rnn(torch.cat(x, 1))
    assert_close("h", h, h2, 0.0)
    assert_close("logits", logits, t.transition(h2), 0.0)


def test_state_dict_names_match_the_example():
    keys = set(SPINN(6, 4, predict=True).state_dict())
    assert keys == {
        "reduce.left.weight", "reduce.left.bias", "reduce.right.weight", "reduce.track.weight",
        "tracker.rnn.weight_ih", "tracker.rnn.weight_hh", "tracker.rnn.bias_ih", "tracker.rnn.bias_hh",
        "tracker.transition.weight", "tracker.transition.bias",
    }  # fmt: skip
    assert set(SPINN(6).state_dict()) == {"reduce.left.weight", "reduce.left.bias", "reduce.right.weight"}


def test_float32_close_to_float64():
    B, H, HT = 16, 8, 4
    model = _model(H, HT)
    buffers, tr, null = _inputs(B, H, [random.Random(b).randint(1, 9) for b in range(B)], seed=2)
    want = model(buffers, tr, null)
    got = model.float()(buffers.float(), tr, null.float())
    assert_close("h float32", got, want.float(), 1e-5)


# Bad inputs: clear errors that name the argument.


def _bad_call(tr=None, buffers=None, null=None, lengths=None, **kw):
    H = 3
    model = SPINN(H, 2, **kw)
    if buffers is None:
        buffers = torch.rand(2, 3, 2 * H)
    return model(buffers, tr, null, lengths=lengths)


@pytest.mark.parametrize(
    "tr, exc, match",
    [
        (
            [[SHIFT, SHIFT], [REDUCE, SHIFT], [SHIFT, SHIFT], [REDUCE, REDUCE]],
            ValueError,
            "step 1, example 0 reduces",
        ),
        ([[SHIFT, SHIFT], [SHIFT, 5]], ValueError, "unknown code 5 at step 1, example 1"),
        ([[SHIFT, SHIFT]] * 4, ValueError, "shifts 4 times but buffers holds only N=3"),
        ([[REDUCE, PAD]], ValueError, "reduces with 0 entries"),
        (
            [[SHIFT, SHIFT], [SHIFT, SHIFT], [REDUCE, PAD]],
            ValueError,
            r"example 1 leaves 2 entries on the stack after its last step 2; a complete parse leaves 1 tree "
            r"\(2 shifts need 1 reduces, got 0\)",
        ),
        (
            [[SHIFT, SHIFT], [SHIFT, SHIFT], [SHIFT, SHIFT], [REDUCE, REDUCE]],
            ValueError,
            r"example 0 leaves 2 entries on the stack after its last step 3; "
            r".*\(3 shifts need 2 reduces, got 1\)",
        ),
        (
            [[SHIFT, PAD], [PAD, PAD]],
            ValueError,
            "example 1 shifts no leaf in its 2 steps, so no tree is left on the stack at the end",
        ),
        (torch.empty(0, 2, dtype=torch.int64), ValueError, "example 0 shifts no leaf in its 0 steps"),
    ],
    ids=[
        "reduce-one-entry",
        "unknown-code",
        "too-many-shifts",
        "reduce-empty",
        "unfinished",
        "unfinished-after-reduces",
        "empty-example",
        "no-steps",
    ],
)
@pytest.mark.parametrize("backend", ["auto", "reference"])  # the C++ loop and the Python one
def test_bad_transitions(tr, exc, match, backend):
    with pytest.raises(exc, match=match):
        _bad_call(torch.as_tensor(tr), backend=backend)


def test_bad_inputs():
    H = 3
    ok_tr = pad_transitions([[SHIFT, SHIFT, REDUCE], [SHIFT]])
    with pytest.raises(TypeError, match="transitions: expected an integer tensor"):
        _bad_call(ok_tr.float())
    with pytest.raises(TypeError, match="transitions: expected a torch.Tensor"):
        _bad_call(ok_tr.tolist())
    with pytest.raises(ValueError, match=r"transitions: expected shape \(T, B=2\)"):
        _bad_call(ok_tr[:, :1])
    with pytest.raises(ValueError, match=r"buffers: expected shape \(B, N, 2·H\)"):
        _bad_call(ok_tr, buffers=torch.rand(2, 3, 5))
    with pytest.raises(ValueError, match=r"w_l: expected shape \(20, 4\)"):
        _bad_call(ok_tr, buffers=torch.rand(2, 3, 8))
    with pytest.raises(TypeError, match="buffers: expected a floating tensor"):
        _bad_call(ok_tr, buffers=torch.ones(2, 3, 2 * H, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"null: expected shape \(2, 6\)"):
        _bad_call(ok_tr, null=torch.rand(2, H))
    with pytest.raises(TypeError, match="null: expected dtype torch.float32"):
        _bad_call(ok_tr, null=torch.rand(2, 2 * H, dtype=torch.float64))
    with pytest.raises(ValueError, match="transitions: required unless the module predicts"):
        _bad_call(None)
    with pytest.raises(ValueError, match=r"lengths: expected values in \[1, N=3\], got \[3, 0\]"):
        _bad_call(None, predict=True, lengths=torch.tensor([3, 0]))  # greedy parse of an empty sentence
    with pytest.raises(ValueError, match="predict: transition prediction needs a tracker"):
        SPINN(3, None, predict=True)
    with pytest.raises(ValueError, match="h_track: expected a tensor exactly when"):
        TreeLSTMReduce(3)(*(torch.rand(2, 3) for _ in range(4)), torch.rand(2, 2))


def test_autograd_variant_matches_reference():
    """The autograd-only loop (kept for the benchmark comparison) computes the same thing."""
    from rnnfast.ops.spinn.encoder import encode_autograd, make_plan

    B, H, HT = 10, 5, 4
    model = _model(H, HT)
    buffers, tr, null = _inputs(B, H, [random.Random(b).randint(1, 8) for b in range(B)], seed=4)
    r, t = model.reduce, model.tracker
    p = make_plan(tr, buffers.shape[1])
    h, c = encode_autograd(p, buffers, null, r.left.weight, r.left.bias, r.right.weight, r.track.weight,
                           *t.rnn.parameters())  # fmt: skip
    rh, rc, _ = reference.spinn(model, buffers, tr, null)
    assert_close("h", h, rh, TOL)
    params = [buffers, null] + list(model.parameters())
    got = torch.autograd.grad((h + c).sum(), params)
    want = torch.autograd.grad((rh + rc).sum(), params)
    for name, a, b in zip(["buffers", "null"] + [n for n, _ in model.named_parameters()], got, want):
        assert_close(f"grad {name}", a, b, TOL)


def _weights(model):
    r, t = model.reduce, model.tracker
    return [r.left.weight, r.left.bias, r.right.weight, r.track.weight, *t.rnn.parameters()]


def test_prebuilt_plan_matches():
    from rnnfast.ops.spinn import make_plan

    B, H = 6, 5
    model = _model(H, 4)
    buffers, tr, null = _inputs(B, H, [3, 1, 6, 2, 5, 4], seed=8)
    want = model(buffers, tr, null)
    h, *_ = spinn_encode(buffers, None, null, *_weights(model), plan=make_plan(tr, buffers.shape[1]))
    assert_close("h", h, want, 0.0)
    with pytest.raises(ValueError, match="plan: expected a Plan for B=3, N=6"):
        spinn_encode(buffers[:3], None, null[:3], *_weights(model), plan=make_plan(tr, buffers.shape[1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_reference():
    B, H = 33, 7
    model = _model(H, 5)
    rng = random.Random(1)
    buffers, tr, null = _inputs(B, H, [rng.randint(1, 9) for _ in range(B)], seed=6)
    rh, rc, _ = reference.spinn(model, buffers, tr, null)
    params = [buffers, null] + list(model.parameters())
    want = torch.autograd.grad((rh + 2 * rc).sum(), params)
    model.cuda()
    bc, nc = buffers.detach().cuda().requires_grad_(), null.detach().cuda().requires_grad_()
    h, c = model(bc, tr, nc, return_c=True)
    assert_close("h", h.cpu(), rh, TOL)
    got = torch.autograd.grad((h + 2 * c).sum(), [bc, nc] + list(model.parameters()))
    names = ["buffers", "null"] + [n for n, _ in model.named_parameters()]
    for name, a, b in zip(names, got, want):
        assert_close(f"grad {name}", a.cpu(), b, TOL)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_capture():
    """With the plan on the device, the whole loop is captured in one CUDA graph and replays."""
    from rnnfast.ops.spinn import make_plan

    B, H = 16, 8
    model = _model(H, 4).float().cuda()
    rng = random.Random(2)
    buffers, tr, null = _inputs(B, H, [rng.randint(1, 9) for _ in range(B)], seed=9)
    buffers, null = buffers.detach().float().cuda(), null.detach().float().cuda()
    p = make_plan(tr, buffers.shape[1], device="cuda")
    weights = [w.detach() for w in _weights(model)]
    with torch.no_grad():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            spinn_encode(buffers, None, null, *weights, plan=p)  # warm-up outside the capture
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            h, *_ = spinn_encode(buffers, None, null, *weights, plan=p)
        buffers.copy_(torch.rand_like(buffers) - 0.5)
        g.replay()
        torch.cuda.synchronize()
        want, *_ = spinn_encode(buffers, None, null, *weights, plan=p)
    assert_close("h (graph replay)", h, want, 1e-6)


# The C++ loop (rnnfast::spinn_fwd / spinn_bwd), which SPINN runs on CPU float32/float64 tensors.


def _op_inputs(tracker=True, biases=True, B=4, H=3, HT=2, lens=(3, 1, 4, 2), seed=11):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.rand(*s, generator=g, dtype=torch.float64) * 1.2 - 0.6

    rng = random.Random(seed)
    tr = pad_transitions([random_transitions(n, rng) for n in lens])
    N = max(lens)
    w = dict(w_l=r(5 * H, H), b_l=r(5 * H) if biases else None, w_r=r(5 * H, H))
    w.update(w_t=None, w_ih=None, w_hh=None, b_ih=None, b_hh=None)
    if tracker:
        w.update(w_t=r(5 * H, HT), w_ih=r(4 * HT, 3 * H), w_hh=r(4 * HT, HT))
        if biases:
            w.update(b_ih=r(4 * HT), b_hh=r(4 * HT))
    return r(B, N, 2 * H), r(B, 2 * H), tr, w


def _cpp_calls(monkeypatch):
    from rnnfast.ops.spinn import function

    calls = []
    real = function.spinn_cpu

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(function, "spinn_cpu", counting)
    return calls


@pytest.mark.parametrize("tracker,biases", [(True, True), (True, False), (False, True), (False, False)],
                         ids=["tracker", "tracker-nobias", "no-tracker", "no-tracker-nobias"])  # fmt: skip
def test_cpp_loop_gradcheck(tracker, biases, monkeypatch):
    calls = _cpp_calls(monkeypatch)
    buffers, null, tr, w = _op_inputs(tracker, biases)
    names = [k for k, v in w.items() if v is not None]
    w_trans = torch.rand(4, 2, dtype=torch.float64) - 0.5 if tracker else None

    def f(buffers, null, *ws):
        kw = dict(zip(names, ws))
        h, c, logits, _ = spinn_encode(buffers, tr, null, **{**w, **kw}, w_trans=w_trans)
        return (h, c, logits) if tracker else (h, c)

    args = [buffers.requires_grad_(), null.requires_grad_()] + [w[n].requires_grad_() for n in names]
    assert torch.autograd.gradcheck(f, args)
    assert calls, "the C++ loop did not run"


def test_cpp_loop_matches_python_loop_float32(monkeypatch):
    """float32 (the fast exp/tanh of the C++ cells) against the Python loop in float64."""
    calls = _cpp_calls(monkeypatch)
    B, H, HT = 24, 16, 8
    model = _model(H, HT, predict=True)
    rng = random.Random(5)
    buffers, tr, null = _inputs(B, H, [rng.randint(1, 12) for _ in range(B)], seed=5)
    model.backend = model.reduce.backend = "reference"
    want = model(buffers, tr, null, return_c=True)
    params = [buffers, null] + list(model.parameters())
    g_want = torch.autograd.grad(sum(o.sum() for o in want), params)
    model.backend = model.reduce.backend = "auto"
    model.float()
    b32, n32 = buffers.detach().float().requires_grad_(), null.detach().float().requires_grad_()
    got = model(b32, tr, n32, return_c=True)
    g_got = torch.autograd.grad(sum(o.sum() for o in got), [b32, n32] + list(model.parameters()))
    assert len(calls) == 1
    for name, a, b in zip(["h", "c", "logits"], got, want):
        assert_close(name, a, b.float(), 2e-5)
    for name, a, b in zip(["buffers", "null"] + [n for n, _ in model.named_parameters()], g_got, g_want):
        assert_close(f"grad {name}", a, b.float(), 1e-4)


@pytest.mark.parametrize("tracker", [True, False], ids=["tracker", "no-tracker"])
def test_cpp_ops_opcheck_and_every_output_written(tracker):
    """opcheck of both custom ops; with RNNFAST_DEBUG_POISON=1 (set by conftest) every output starts as
    NaN, so a NaN left anywhere is an element the C++ code forgot to write."""
    buffers, null, tr, w = _op_inputs(tracker, lens=(3, 1, 4, 1))
    fwd = (buffers, null, tr, *w.values())
    torch.library.opcheck(torch.ops.rnnfast.spinn_fwd.default, fwd)
    outs = torch.ops.rnnfast.spinn_fwd(*fwd)
    for i, o in enumerate(outs):
        assert not o.isnan().any(), f"output {i} of spinn_fwd has unwritten elements"
    h, c, hs, ph, pc, gates, acts, cs = outs
    assert (hs.numel() > 0) == tracker
    g = torch.Generator().manual_seed(3)
    grads = [torch.rand(t.shape, generator=g, dtype=t.dtype) for t in (h, c)]
    grads.append(torch.rand(hs.shape, generator=g, dtype=hs.dtype) if tracker else None)
    bwd = (*grads, tr, ph, pc, gates, acts, cs, hs, w["w_l"], True, w["w_r"], w["w_t"], w["w_ih"],
           w["w_hh"], tracker)  # fmt: skip
    torch.library.opcheck(torch.ops.rnnfast.spinn_bwd.default, bwd)
    for i, o in enumerate(torch.ops.rnnfast.spinn_bwd(*bwd)):
        assert not o.isnan().any(), f"output {i} of spinn_bwd has unwritten elements"


def test_cpp_ops_refuse_bad_transitions():
    """The ops validate the transitions themselves (compiled graphs skip the Python checks)."""
    buffers, null, tr, w = _op_inputs()
    bad = tr.clone()
    bad[0, 1] = REDUCE
    with pytest.raises(ValueError, match="step 0, example 1 reduces with 0 entries"):
        torch.ops.rnnfast.spinn_fwd(buffers, null, bad, *w.values())
    bad[0, 1] = 7
    with pytest.raises(ValueError, match="unknown code 7 at step 0, example 1"):
        torch.ops.rnnfast.spinn_fwd(buffers, null, bad, *w.values())
    with pytest.raises(ValueError, match="example 2 shifts 4 times but buffers holds only N=2"):
        torch.ops.rnnfast.spinn_fwd(buffers[:, :2], null, tr, *w.values())
    unfinished = torch.cat([tr, torch.tensor([[PAD, SHIFT, PAD, PAD]])])  # example 1: a leaf never reduced
    with pytest.raises(ValueError, match="example 1 leaves 2 entries on the stack after its last step"):
        torch.ops.rnnfast.spinn_fwd(buffers, null, unfinished, *w.values())


def test_snli_reader_drops_pairs_the_encoder_refuses(tmp_path):
    """An empty sentence has no tree: the reader drops its pair (as it drops '-' labels) rather than hand
    the encoder an all-PAD column, which it refuses."""
    import json

    from rnnfast.data.snli import read_jsonl

    rows = [
        {"gold_label": "entailment", "sentence1_binary_parse": "( a b )", "sentence2_binary_parse": "c"},
        {"gold_label": "neutral", "sentence1_binary_parse": "", "sentence2_binary_parse": "( d e )"},
        {"gold_label": "contradiction", "sentence1_binary_parse": "f", "sentence2_binary_parse": "  "},
    ]
    path = tmp_path / "snli.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_jsonl(path)
    assert [(e.premise, e.hypothesis) for e in got] == [(["a", "b"], ["c"])]
