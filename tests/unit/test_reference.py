"""The quick profile trains all four reference models in seconds; they load back with the Auto classes."""

import json

import pytest
import torch

from mint import reference

EXPECTED_CLASS = {
    "mini-mixtral": "MixtralForCausalLM",
    "mini-qwen2moe": "Qwen2MoeForCausalLM",
    "mini-qwen3moe": "Qwen3MoeForCausalLM",
    "mini-llama4": "Llama4ForCausalLM",
}
# One stacked-or-per-expert weight name per model, as the hub checkpoints of the real models spell it.
EXPECTED_KEY = {
    "mini-mixtral": "model.layers.0.block_sparse_moe.experts.7.w1.weight",
    "mini-qwen2moe": "model.layers.0.mlp.experts.39.gate_proj.weight",
    "mini-qwen3moe": "model.layers.0.mlp.experts.39.down_proj.weight",
    "mini-llama4": "model.layers.0.feed_forward.experts.gate_up_proj",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    return {name: (root / name, reference.train_reference(name, root / name, "quick", progress=False))
            for name in reference.MODELS}


@pytest.mark.parametrize("name", reference.MODELS)
def test_quick_training_loads_back_and_learns(trained, name):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, meta = trained[name]
    assert meta["final_val_loss"] < meta["initial_val_loss"] - 0.3
    assert meta["wall_s"] < 60
    log = (out / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,tokens,lr,train_loss")
    assert len(log) == 1 + 1 + meta["recipe"]["steps"] // meta["recipe"]["eval_every"]
    saved = json.loads((out / "train_meta.json").read_text())
    assert saved["tokens_seen"] == meta["recipe"]["steps"] * meta["recipe"]["batch_size"] * meta["recipe"]["seq_len"]

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == EXPECTED_CLASS[name]
    assert reference.count_params(model) == meta["params"]
    with safe_open(out / "model.safetensors", "pt") as f:
        assert EXPECTED_KEY[name] in f.keys()
        assert all(f.get_slice(k).get_dtype() == "BF16" for k in f.keys())
    ids = tok("The quick brown fox.\n\n = Robert Boulter = ", return_tensors="pt").input_ids
    assert tok.decode(ids[0]) == "The quick brown fox.\n\n = Robert Boulter = "
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()


def test_every_input_dim_divisible_by_128():
    for profile in reference.PROFILES:
        for name in reference.MODELS:
            recipe = reference.resolve_recipe(name, profile)
            model = reference.build_model(name, recipe)
            for key, w in model.state_dict().items():
                if w.dim() >= 2 and "embed_tokens" not in key:
                    # Llama 4 stores experts as [E, in, out]; everyone else [.., out, in].
                    in_dim = w.shape[-2] if "feed_forward.experts" in key else w.shape[-1]
                    assert in_dim % 128 == 0, (profile, name, key, tuple(w.shape))


def test_llama4_sparse_forward_matches_stock():
    recipe = reference.resolve_recipe("mini-llama4", "quick", {"top_k": 2})
    torch.manual_seed(0)
    model = reference.build_model("mini-llama4", recipe)
    moe = next(m for m in model.modules() if type(m).__name__ == "Llama4TextMoe")
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.05)
    h = torch.randn(2, 9, 128, requires_grad=True)
    params = [h, moe.experts.gate_up_proj, moe.experts.down_proj, moe.router.weight]
    ours, _ = moe(h)
    stock, _ = type(moe).forward(moe, h)
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-5)
    for a, b in zip(torch.autograd.grad(ours.square().sum(), params), torch.autograd.grad(stock.square().sum(), params)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_grouped_mm_loop_matches_torch():
    torch.manual_seed(0)
    x, w = torch.randn(10, 128), torch.randn(4, 128, 256)
    offs = torch.tensor([3, 3, 7, 10], dtype=torch.int32)  # expert 1 gets no rows
    torch.testing.assert_close(reference._grouped_mm_loop(x, w, offs),
                               torch.nn.functional.grouped_mm(x, w, offs=offs), atol=1e-4, rtol=1e-5)


def test_recipe_overrides_are_checked():
    assert reference.resolve_recipe("mini-qwen3moe", "full", {"lr": 1})["lr"] == 1.0
    with pytest.raises(reference.RecipeError, match="unknown recipe key"):
        reference.resolve_recipe("mini-mixtral", "full", {"stpes": 3})
    with pytest.raises(reference.RecipeError, match="wants int"):
        reference.resolve_recipe("mini-mixtral", "full", {"steps": "3"})
    with pytest.raises(reference.RecipeError, match="multiple of 128"):
        reference.resolve_recipe("mini-mixtral", "full", {"hidden_size": 96})
    with pytest.raises(reference.RecipeError, match="unknown reference model"):
        reference.resolve_recipe("mini-gpt", "full")


def test_lr_schedule():
    r = {"lr": 1.0, "warmup_steps": 10, "steps": 110, "min_lr_ratio": 0.1}
    assert reference.lr_at(0, r) == pytest.approx(0.1)
    assert reference.lr_at(9, r) == pytest.approx(1.0)
    assert reference.lr_at(60, r) == pytest.approx(0.55)
    assert reference.lr_at(110, r) == pytest.approx(0.1)


def test_main_user_errors(tmp_path, capsys):
    assert reference.main(["--model", "mini-mixtral", "--out", str(tmp_path), "--set", "nope=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mint train-reference: error: unknown recipe key") and err.count("\n") == 1
    assert reference.main(["--model", "mini-mixtral", "--out", str(tmp_path), "--overrides", '{"steps": "x"}']) == 2
    assert "wants int" in capsys.readouterr().err
    assert reference.main(["--model", "mini-mixtral", "--out", str(tmp_path), "--overrides", "{steps"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        reference.main(["--model", "mini-gpt", "--out", str(tmp_path)])
    assert e.value.code == 2
