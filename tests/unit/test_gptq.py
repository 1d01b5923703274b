"""GPTQ baseline (llm-compressor in .venv-gptq) against RTN on tiny real checkpoints.

The property that makes it GPTQ: on each layer's calibration activations X, its reconstruction error
||(W - W_q) X|| is below round-to-nearest's at the same (bits, group). X is captured here with forward
hooks on the original model (transformers of the main environment) from the same calibration tokens;
routed experts see every token, as GPTQ calibrated them (`moe_calibrate_all_experts`).
"""

import functools
import json
import math
from types import SimpleNamespace

import pytest
import torch

from mint import baseline, quantizer
from mint.checkpoint import Checkpoint, read_header
from mint.gptq import packed_bytes
from mint.testing import make_tiny_checkpoint



def require_env():
    """`make test` builds the GPTQ environment; a missing one fails the test rather than skipping it."""
    assert baseline.gptq_python().exists(), "GPTQ environment absent: run `make gptq-env`"


def needs_env(test):
    @functools.wraps(test)
    def wrapped(*args, **kwargs):
        require_env()
        return test(*args, **kwargs)
    return wrapped

WINDOWS, SEQ_LEN = 16, 64  # 1,024 calibration tokens, well above the 128 input features
# One config per architecture keeps the suite short while covering 4-, 3- and 2-bit and both groups.
CASES = [("qwen3_moe", 4, 128), ("mixtral", 3, 64), ("qwen2_moe", 2, 64), ("llama4", 4, 64)]


def gptq_matrices(ckpt):
    """(key, ref, expert index or None) of every matrix GPTQ quantizes, from the checkpoint's roles."""
    out = []
    for ref in ckpt.refs:
        if ref.role not in baseline.GPTQ_ROLES or len(ref.shape) < 2:
            continue
        if ref.n_experts > 1:
            out += [((ref.layer, e, ref.proj), ref, e) for e in range(ref.n_experts)]
        elif ref.role == "routed_expert":
            out.append(((ref.layer, ref.expert, ref.proj), ref, None))
        else:
            out.append((ref.name, ref, None))
    return out


def read(ckpt, ref, expert):
    return (ckpt.read(ref) if expert is None else ckpt.read_expert(ref, expert)).double()


@torch.no_grad()
def calibration_inputs(folder, ids):
    """Inputs of every Linear ({weight name: X [tokens, in]}) and of every experts module ({layer: X}),
    and the tokens each expert gets under top-k routing ({layer: counts}), from the original model."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    cfg = model.config
    linear, experts, routing, handles = {}, {}, {}, []

    def keep(store, key):
        def hook(module, args):
            store[key] = args[0].reshape(-1, args[0].shape[-1]).double()
        return hook

    def route(layer):
        def hook(module, args):
            logits = torch.nn.functional.linear(args[0].reshape(-1, module.weight.shape[1]), module.weight)
            idx = torch.topk(logits, cfg.num_experts_per_tok, dim=-1).indices
            routing[layer] = torch.bincount(idx.reshape(-1), minlength=module.weight.shape[0]).tolist()
        return hook

    for name, module in model.named_modules():
        layer = int(name.split("layers.")[1].split(".")[0]) if "layers." in name else None
        if name.endswith((".mlp.gate", ".feed_forward.router")):
            handles.append(module.register_forward_pre_hook(route(layer)))
        elif isinstance(module, torch.nn.Linear):
            handles.append(module.register_forward_pre_hook(keep(linear, f"{name}.weight")))
        elif name.endswith(".experts"):
            handles.append(module.register_forward_pre_hook(keep(experts, layer)))
    assert cfg.hidden_act == "silu"
    model(input_ids=ids, use_cache=False)
    for h in handles:
        h.remove()
    return linear, experts, routing


@pytest.fixture(scope="module", params=CASES, ids=[f"{a}-{b}bit-g{g}" for a, b, g in CASES])
def run(request, tmp_path_factory):
    arch, bits, group = request.param
    require_env()
    root = tmp_path_factory.mktemp(f"gptq-{arch}")
    folder = make_tiny_checkpoint(arch, root / "ckpt", hidden=128, intermediate=128)
    out, dequant = root / "gptq.json", root / "dequant"
    rc = baseline.main(["gptq", "--checkpoint", str(folder), "--bits", str(bits), "--group-size", str(group),
                        "--out", str(out), "--dequant-out", str(dequant), "--calibration", "random",
                        "--windows", str(WINDOWS), "--seq-len", str(SEQ_LEN), "--threads", "1"])
    assert rc == 0
    ids = baseline.calibration_windows(folder, "random", WINDOWS, SEQ_LEN, seed=0)
    return SimpleNamespace(arch=arch, bits=bits, group=group, folder=folder, ckpt=Checkpoint(folder),
                           dequant=Checkpoint(dequant), dequant_dir=dequant, ids=ids,
                           result=json.loads(out.read_text()))


@pytest.mark.gptq
@needs_env
def test_dequantized_folder_has_the_input_layout(run):
    want = {n: tuple(i["shape"]) for f in run.folder.glob("*.safetensors") for n, i in read_header(f).items()}
    got = {n: (i["dtype"], tuple(i["shape"])) for f in run.dequant_dir.glob("*.safetensors")
           for n, i in read_header(f).items()}
    assert {n: s for n, (_, s) in got.items()} == want
    assert {d for d, _ in got.values()} == {"F32"}
    quantized = {ref.name for _, ref, _ in gptq_matrices(run.ckpt)}
    for ref in run.ckpt.refs:
        w, w_q = run.ckpt.read(ref).float(), run.dequant.read(ref)
        if ref.name not in quantized:  # embeddings, head, routers, norms, biases: untouched
            assert torch.equal(w, w_q), ref.name
    levels = 2**run.bits
    for _, ref, e in gptq_matrices(run.ckpt):
        w_q = read(run.dequant, ref, e)
        assert not torch.equal(w_q, read(run.ckpt, ref, e))
        # Each group holds at most 2^b distinct values: it is on a b-bit grid.
        groups = w_q.reshape(w_q.shape[0], -1, run.group)
        distinct = max(len(torch.unique(g)) for g in groups.reshape(-1, run.group))
        assert distinct <= levels, (ref.name, distinct)


@pytest.mark.gptq
@needs_env
def test_gptq_beats_rtn_on_calibration_activations(run):
    linear, experts, _ = calibration_inputs(run.folder, run.ids)
    dtype16 = torch.bfloat16  # the tiny checkpoints are bf16: the scale dtype of both quantizers
    originals = {key: read(run.ckpt, ref, e) for key, ref, e in gptq_matrices(run.ckpt)}
    ratios = {}
    for key, ref, e in gptq_matrices(run.ckpt):
        w = originals[key]
        if isinstance(key, str):
            x = linear[key]
        else:
            layer, expert, proj = key
            x = experts[layer]
            if proj == "down_proj":
                gate, up = originals[(layer, expert, "gate_proj")], originals[(layer, expert, "up_proj")]
                x = torch.nn.functional.silu(x @ gate.T) * (x @ up.T)
        w_gptq = read(run.dequant, ref, e)
        w_rtn = quantizer.dequantize(*quantizer.quantize(w.float(), run.bits, run.group, dtype16), run.group)
        err_gptq = torch.linalg.norm((w - w_gptq) @ x.T)
        err_rtn = torch.linalg.norm((w - w_rtn.double()) @ x.T)
        ratios[key] = float(err_gptq / err_rtn)
    worse = {k: r for k, r in ratios.items() if r >= 1}
    assert not worse, worse
    print(f"\n{run.arch} {run.bits}-bit g{run.group}: ||(W-Wq)X|| GPTQ/RTN over {len(ratios)} matrices: "
          f"mean {sum(ratios.values()) / len(ratios):.3f}, max {max(ratios.values()):.3f}")


@pytest.mark.gptq
@needs_env
def test_size_matches_a_direct_count(run):
    r, b, g = run.result, run.bits, run.group
    # Count the pack-quantized tensors of every quantized matrix from the checkpoint's own shapes.
    direct, quantized = 0, 0
    for _, ref, _ in gptq_matrices(run.ckpt):
        out, inp = ref.out_in
        groups = inp // g
        direct += out * inp * b // 8 + 2 * out * groups + (out * b // 8) * groups + 16
        quantized += out * inp
    direct += 2 * (run.ckpt.n_params() - quantized)
    assert r["total_bytes"] == direct
    assert r["quantized_weights"] == quantized
    # The worker checked packed_bytes against compressed-tensors' own tensors for every module.
    assert r["quantized_bytes"] == sum(m["packed_bytes"] for m in r["worker"]["quantized_modules"])
    assert r["avg_bits"] == pytest.approx(8 * r["total_bytes"] / r["n_params"])
    assert r["size16_bytes"] == run.ckpt.size16_bytes()
    assert r["total_gib"] == r["total_bytes"] / 1024**3
    assert r["wall_seconds"] > 0 and r["peak_rss_mb"] > 0


@pytest.mark.gptq
@needs_env
def test_routing_coverage_matches_the_model(run):
    _, _, routing = calibration_inputs(run.folder, run.ids)
    r = run.result
    assert r["tokens_per_expert"] == {str(k): v for k, v in sorted(routing.items())}
    assert r["experts_without_tokens"] == {str(k): sum(c == 0 for c in v) for k, v in routing.items()}
    top_k = r["worker"]["top_k"]
    assert all(sum(v) == top_k * WINDOWS * SEQ_LEN for v in routing.values())


def test_packed_bytes_closed_form():
    # Aligned shapes: b bits per weight, a 16-bit scale and a b-bit zero point per group, 16 bytes.
    for out, inp, b, g in [(4096, 4096, 4, 128), (256, 128, 3, 64), (64, 512, 2, 64), (96, 128, 3, 32)]:
        assert packed_bytes(out, inp, b, g) == out * inp * b // 8 + (out * inp // g) * (2 + b / 8) + 16
    # Ragged: codes and zero points round up to whole int32 words, a partial group has a scale too.
    assert packed_bytes(1, 100, 3, 64) == 4 * math.ceil(300 / 32) + 2 * 2 + 4 * 1 * 2 + 16


def test_calibration_windows_are_seeded_and_refuse_the_test_split(tmp_path):
    folder = make_tiny_checkpoint("qwen3_moe", tmp_path / "ckpt", hidden=64, intermediate=64)
    a = baseline.calibration_windows(folder, "random", 4, 32, seed=1)
    assert a.shape == (4, 32) and a.dtype == torch.int64 and int(a.max()) < 256
    assert torch.equal(a, baseline.calibration_windows(folder, "random", 4, 32, seed=1))
    assert not torch.equal(a, baseline.calibration_windows(folder, "random", 4, 32, seed=2))
    assert baseline.calibration_windows(folder, "random", 2, 10_000).shape == (2, 512)  # max positions
    with pytest.raises(ValueError, match="evaluation split"):
        baseline.calibration_windows(folder, "wikitext2-test", 4, 32)
    with pytest.raises(ValueError, match="tokenizer"):
        baseline.calibration_windows(folder, "gutenberg-train", 4, 32)


def test_uniform_baseline_runs_from_the_cli(tmp_path, capsys):
    from mint import analyze, experts

    folder = make_tiny_checkpoint("qwen3_moe", tmp_path / "ckpt", hidden=128, intermediate=128)
    analyze.analyze(folder, tmp_path / "analysis", spectral=False)
    experts.build_units(folder, tmp_path / "analysis", tmp_path / "units", spectral=False)
    out = tmp_path / "uniform.json"
    rc = baseline.main(["uniform", "--units", str(tmp_path / "units" / "units.parquet"), "--bits", "4",
                        "--group-size", "64", "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["solver"] == "uniform" and r["total_gib"] == r["total_bytes"] / 1024**3
    # Time and memory are printed, not written: the file depends only on its inputs.
    assert "wall_seconds" not in r and "peak_rss_mb" not in r
    assert " s, peak " in capsys.readouterr().out
