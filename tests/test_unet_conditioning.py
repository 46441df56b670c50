"""The UNet's own DA-CLIP conditioning paths, which reach every block: ``sd.conditioning.time_embedding`` (the
degradation embedding added to the time embedding every ResBlock receives), ``sd.conditioning.modulated_lora``
(every LoRA layer's ``B · M(e) · A``, ``M`` predicted from the degradation embedding) and
``sd.conditioning.output_norm``; and the one interface they share (a toy path registered here)."""

import dataclasses
import json

import pytest
import torch
from torch import nn

from daclip_lora.apps.cli import main
from daclip_lora.restoration.conditioning import PATHS as REGISTERED_PATHS, Conditions, ConditioningPath
from daclip_lora.restoration.conditioning.modulated_lora import ModulatedLora, ModulatedLoraVariant, lora_layers
from daclip_lora.restoration.conditioning.output_norm import ModulatedNorm
from daclip_lora.restoration.conditioning.time_embedding import ResidualTimeEmbedding
from daclip_lora.restoration.model import RestorationUNet
from daclip_lora.restoration.pipeline import RestorationPipeline, load_sd_components
from daclip_lora.restoration.serialization import load_restoration, read_restoration_config, save_restoration
from daclip_lora.training.engine import Engine
from daclip_lora.training.tasks.restoration import RestorationTrainer

from test_restoration import _inputs, _model, _opt, _perturb

PATHS = {"time_embedding": {"time_embedding": True}, "modulated_lora": {"modulated_lora": True},
         "output_norm": {"output_norm": True},
         "both": {"time_embedding": True, "modulated_lora": True},
         "all": {"time_embedding": True, "modulated_lora": True, "output_norm": True}}


@pytest.fixture(scope="module")
def assets(sd_assets):
    return sd_assets


def _no_other_conditioning():
    """Only the path under test can carry the degradation embedding: no DA-CLIP tokens, no LQ latent."""
    return dict(image_context=False, degra_context=False, lq_latent=False)


@pytest.mark.parametrize("path", list(PATHS))
@torch.no_grad()
def test_step0_is_exactly_the_model_without_the_path(assets, path):
    _, plain = _model(assets, seed=0)
    _, model = _model(assets, seed=0, **PATHS[path])
    x = _inputs()
    assert (model(**x) - plain(**x)).abs().max().item() == 0.0


@pytest.mark.parametrize("path", ["modulated_lora", "both"])
@torch.no_grad()
def test_fresh_modulation_is_plain_lora(assets, path):
    """With trained (non-zero) LoRA weights, a fresh modulation (M = I) leaves the LoRA's output unchanged."""
    _, plain = _model(assets, seed=0)
    _, model = _model(assets, seed=0, **PATHS[path])
    for m in (plain, model):
        _perturb(m.unet, seed=3)  # LoRA A and B (and the LQ conv) non-zero, the same in both
    if path == "both":
        model.paths["time_embedding"].linear_2.weight.zero_()  # the time path back at its zero start
        model.paths["time_embedding"].linear_2.bias.zero_()
    x = _inputs()
    assert (model(**x) - plain(**x)).abs().max().item() < 1e-6


def test_output_norm_new_layers_are_trained_and_the_base_norm_is_not(assets):
    _, model = _model(assets, output_norm=True)
    assert isinstance(model.unet.conv_norm_out, ModulatedNorm)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    new = {f"paths.output_norm.{n}" for n, _ in model.paths["output_norm"].named_parameters()}
    assert new <= trainable and len(new) == 6  # embed_norm, linear_1, linear_2: weight and bias each
    assert not {n for n in trainable if n.startswith("unet.conv_norm_out.")}


@torch.no_grad()
def test_output_norm_takes_a_one_pixel_latent(assets):
    """Its statistics stay finite on a 1x1 feature map (a population std, not a sample std)."""
    _, model = _model(assets, output_norm=True)
    _perturb(model, seed=4)
    x = _inputs()
    c = x["conditions"]
    x["noisy"], x["conditions"] = x["noisy"][..., :1, :1], dataclasses.replace(c, lq_latent=c.lq_latent[..., :1, :1])
    assert torch.isfinite(model(**x)).all()


def test_time_embedding_weights_are_trained_in_full(assets):
    _, model = _model(assets, time_embedding=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {f"paths.time_embedding.{n}" for n, _ in model.paths["time_embedding"].named_parameters()}
    assert isinstance(model.unet.time_embedding, ResidualTimeEmbedding)
    assert head <= trainable and len(head) == 6  # norm, linear_1, linear_2: weight and bias each


def test_modulation_is_a_peft_variant_on_every_lora_layer_and_is_trained(assets):
    _, model = _model(assets, modulated_lora=True)
    layers = lora_layers(model.unet)
    path = model.paths["modulated_lora"]
    assert isinstance(path, ModulatedLora) and path.num_layers == len(layers) > 0
    assert all(isinstance(layer.lora_variant["default"], ModulatedLoraVariant) for _, layer in layers)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {f"paths.modulated_lora.{n}" for n, _ in path.named_parameters()} <= trainable
    m = path.matrices(Conditions(degradation=torch.randn(3, 64)))
    assert tuple(m.shape) == (3, len(layers), 4, 4)


def test_a_modulated_lora_layer_refuses_to_merge(assets):
    """The merge rule is part of the variant's type: peft's own merge raises, naming why."""
    _, model = _model(assets, modulated_lora=True)
    _, layer = lora_layers(model.unet)[0]
    with pytest.raises(ValueError, match="cannot be merged"):
        layer.merge()
    assert not model.lora_mergeable


def test_the_unet_takes_no_class_labels(assets):
    """No path packs the embedding into class_labels: every UNet call gets none."""
    _, model = _model(assets, time_embedding=True, modulated_lora=True, output_norm=True)
    seen = []
    model.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("class_labels")), with_kwargs=True)
    with torch.no_grad():
        model(**_inputs())
    assert seen == [None]


def _fit(model, steps=40, seed=0):
    """Regress two fixed targets from two degradation embeddings; nothing else tells the samples apart."""
    g = torch.Generator().manual_seed(seed)
    x = _inputs(seed)
    x["conditions"] = dataclasses.replace(x["conditions"], degradation=torch.randn(2, 64, generator=g))
    target = torch.stack([torch.full((4, 4, 4), 1.0), torch.full((4, 4, 4), -1.0)])
    x["noisy"] = x["noisy"][:1].expand(2, -1, -1, -1).contiguous()  # the same input for both samples
    x["timesteps"] = torch.tensor([10, 10])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss = (model(**x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return x


@pytest.mark.parametrize("path, uses_it", [("time_embedding", True), ("modulated_lora", True), ("output_norm", True),
                                           (None, False)])
def test_the_unet_uses_the_degradation_embedding_only_through_the_paths(assets, path, uses_it):
    """Swapping the two samples' embeddings changes the prediction when (and only when) a path is on (the
    targets differ by 2; this tiny UNet, frozen but for attention LoRA and the path, moves about 0.3 in 40 steps)."""
    _, model = _model(assets, **PATHS.get(path, {}), **_no_other_conditioning())
    x = _fit(model)
    with torch.no_grad():
        out = model(**x)
        c = x["conditions"]
        swapped = model(**{**x, "conditions": dataclasses.replace(c, degradation=c.degradation.flip(0))})
    change = (out - swapped).abs().mean().item()
    if uses_it:
        assert change > 0.1, f"the UNet ignores the degradation embedding (mean change {change:.4f})"
    else:
        assert change == 0.0


@pytest.mark.parametrize("path", list(PATHS))
@torch.no_grad()
def test_saved_and_loaded_with_the_folder(assets, tmp_path, path):
    _, model = _model(assets, **PATHS[path])
    _perturb(model, seed=2)
    out = save_restoration(model, tmp_path / "restoration")
    saved = json.loads((out / "restoration.json").read_text())
    assert set(PATHS[path]) <= set(saved["paths"])
    fresh = RestorationUNet(load_sd_components(assets / "tiny_sd").unet, read_restoration_config(out))
    load_restoration(fresh, out)
    x = _inputs(1)
    assert (fresh(**x) - model(**x)).abs().max().item() < 1e-6


@pytest.mark.parametrize("path", list(PATHS))
def test_denoise_without_the_degradation_embedding_is_a_clear_error(assets, path):
    _, model = _model(assets, **PATHS[path])
    x = _inputs()
    x["conditions"] = dataclasses.replace(x["conditions"], degradation=None)
    with pytest.raises(ValueError, match="reads Conditions.degradation"):
        model(**x)


@pytest.mark.parametrize("path, guidance", [("time_embedding", 1.0), ("time_embedding", 2.0),
                                            ("modulated_lora", 1.0), ("modulated_lora", 2.0),
                                            ("output_norm", 1.0), ("output_norm", 2.0)])
def test_trained_from_options_and_restored_by_the_pipeline(assets, tmp_path, path, guidance):
    opt = _opt(tmp_path, assets, f"sd.conditioning.{path}=true")
    Engine(opt, RestorationTrainer(opt)).fit()
    folder = tmp_path / "experiments" / "r" / "models" / "restoration"
    assert path in read_restoration_config(folder).paths
    pipe = RestorationPipeline.from_pretrained(folder, device="cpu")
    lq = torch.rand(1, 3, 40, 24, generator=torch.Generator().manual_seed(0))
    out = pipe(lq, steps=2, guidance_scale=guidance, tile_size=16, seed=0)
    assert tuple(out.shape) == (1, 3, 40, 24) and torch.isfinite(out).all()


def test_merged_pipeline_keeps_the_modulated_lora_and_its_outputs(assets, tmp_path):
    """merge_lora cannot bake a per-image LoRA: it stays a peft layer, and the output is the unmerged one."""
    opt = _opt(tmp_path, assets, "sd.conditioning.modulated_lora=true")
    Engine(opt, RestorationTrainer(opt)).fit()
    folder = tmp_path / "experiments" / "r" / "models" / "restoration"
    lq = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    unmerged = RestorationPipeline.from_pretrained(folder, device="cpu")(lq, steps=2, seed=0)
    pipe = RestorationPipeline.from_pretrained(folder, device="cpu", merge_lora=True)
    assert lora_layers(pipe.model.unet)  # still peft layers
    assert (pipe(lq, steps=2, seed=0) - unmerged).abs().max().item() < 1e-5


@pytest.mark.parametrize("degs, expected", [
    (["a", "a", "b", "b"], [(0, 2), (1, 3), (2, 0), (3, 1)]),
    (["b", "a", "b"], [(0, 1), (1, 0), (2, 1)]),  # a short next list wraps around
    (["a", "a"], [(0, 0), (1, 1)]),  # one degradation: its own list is the next
])
def test_wrong_degradation_pairs(degs, expected):
    from daclip_lora.training.tasks.restoration_ablation import _wrong_degradation_pairs

    assert _wrong_degradation_pairs([{"degradation": d} for d in degs]) == expected


def test_pipeline_embeddings_argument(assets, tmp_path):
    """The LQ's own embeddings passed explicitly give the default output exactly; another image's change it (the
    model uses them); a wrong count is a one-line ValueError."""
    opt = _opt(tmp_path, assets, "sd.conditioning.output_norm=true", "sd.objective=one_step")
    Engine(opt, RestorationTrainer(opt)).fit()
    pipe = RestorationPipeline.from_pretrained(tmp_path / "experiments" / "r" / "models" / "restoration", device="cpu")
    with torch.no_grad():
        _perturb(pipe.model.paths["output_norm"], seed=5)
    lq = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    own = pipe.daclip_embeddings(lq)
    default = pipe(lq, steps=1)
    assert (pipe(lq, steps=1, embeddings=own) - default).abs().max().item() == 0.0
    swapped = tuple(e.flip(0) for e in own)
    assert (pipe(lq, steps=1, embeddings=swapped) - default).abs().max().item() > 1e-4
    with pytest.raises(ValueError, match="one \\(content, degradation\\) pair per image"):
        pipe(lq, steps=1, embeddings=tuple(e[:1] for e in own))


@pytest.mark.parametrize("shapes, indices, size, expected", [
    ([(3, 8, 8)] * 5, [0, 1, 2, 3, 4], 2, [[0, 1], [2, 3], [4]]),
    ([(3, 8, 8), (3, 8, 8), (3, 4, 8), (3, 8, 8)], [0, 1, 2, 3], 16, [[0, 1], [2], [3]]),  # a new shape cuts
    ([(3, 8, 8)] * 3, [2, 0], 16, [[2, 0]]),
])
def test_same_size_chunks(shapes, indices, size, expected):
    from daclip_lora.training.tasks.restoration_ablation import _same_size_chunks

    samples = [{"LQ": torch.zeros(s)} for s in shapes]
    assert _same_size_chunks(samples, indices, size) == expected


def test_unet_alone_report_batched_equals_one_at_a_time(assets, tmp_path):
    """Restoring the report's images in batches gives the figures of one image at a time (to 1e-3 dB); the
    wrong-degradation row really feeds other embeddings (its figure differs, so the equality is not vacuous)."""
    from daclip_lora.training.tasks.restoration_ablation import unet_alone_report

    opt = _opt(tmp_path, assets, "sd.conditioning.output_norm=true", "sd.objective=one_step")
    Engine(opt, RestorationTrainer(opt)).fit()
    pipe = RestorationPipeline.from_pretrained(tmp_path / "experiments" / "r" / "models" / "restoration", device="cpu")
    with torch.no_grad():
        _perturb(pipe.model.paths["output_norm"], seed=5)
    g = torch.Generator().manual_seed(4)
    dataset = [{"LQ": torch.rand(3, 32, 32, generator=g), "GT": torch.rand(3, 32, 32, generator=g),
                "degradation": d} for d in ("noisy", "hazy") * 3]
    one, batched = (unet_alone_report(pipe, dataset, batch=b) for b in (1, 4))
    for key in ("lq", "unet", "unet_wrong_embedding"):
        assert abs(one[key] - batched[key]) < 1e-3
    assert abs(one["unet"] - one["unet_wrong_embedding"]) > 1e-6


class ToyOffset(ConditioningPath):
    """A path from outside the package: a learned offset of every context token, from the degradation embedding."""

    name = "toy_offset"

    def __init__(self, config, unet, scale: float = 1.0):
        super().__init__(config, unet)
        self.scale = float(scale)
        self.linear = nn.Linear(config.embed_dim, config.cross_attention_dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def prepare(self, call, conditions):
        e = conditions.require("degradation", self.name).float()
        offset = self.linear(e) * conditions.keep("daclip", e).view(-1, 1) * self.scale
        call.context = call.context + offset[:, None].to(call.context.dtype)


@pytest.fixture
def toy_path():
    REGISTERED_PATHS.register("toy_offset", ToyOffset)  # the one registry line
    yield
    REGISTERED_PATHS.unregister("toy_offset")


def test_a_registered_path_trains_saves_and_restores_through_the_cli(assets, tmp_path, toy_path):
    _opt(tmp_path, assets)  # writes rest.yml
    yml = tmp_path / "rest.yml"
    yml.write_text(yml.read_text().replace("conditioning: {", "conditioning: {paths: {toy_offset: {scale: 2.0}}, "))
    assert main(["train", "-opt", str(yml), "--root", str(tmp_path)]) == 0
    folder = tmp_path / "experiments" / "r" / "models" / "restoration"
    assert read_restoration_config(folder).paths["toy_offset"] == {"scale": 2.0}
    pipe = RestorationPipeline.from_pretrained(folder, device="cpu")
    path = pipe.model.paths["toy_offset"]
    assert path.linear.weight.abs().sum().item() > 0  # trained, saved and loaded
    lq = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = pipe(lq, steps=2, seed=0)
    with torch.no_grad():
        path.linear.weight.zero_()
        path.linear.bias.zero_()
    assert (pipe(lq, steps=2, seed=0) - out).abs().max().item() > 1e-6  # the pipeline calls it


def test_an_unknown_path_option_is_one_line(assets, toy_path):
    with pytest.raises(ValueError, match=r"sd.conditioning.paths.toy_offset: .*unexpected keyword argument 'scal'"):
        _model(assets, paths={"toy_offset": {"scal": 2.0}})


def test_an_unknown_path_lists_the_registered_ones(assets):
    with pytest.raises(ValueError, match="unknown conditioning path 'toy_offsett'; registered: context_tokens"):
        _model(assets, paths={"toy_offsett": {}})


# ------------------------------------------------------------------------------ the interface's contracts
@pytest.mark.parametrize("switches, paths, expected", [
    (dict(image_context=False), {"context_tokens": {"num_tokens": 8}},
     {"context_tokens": {"image": False, "degradation": True, "num_tokens": 8}, "lq_latent": {}}),
    (dict(output_norm=True), {"output_norm": {"hidden": 16}},
     {"context_tokens": {"image": True, "degradation": True, "num_tokens": 4}, "lq_latent": {},
      "output_norm": {"hidden": 16}}),
    (dict(lq_latent=False), {"time_embedding": None},
     {"context_tokens": {"image": True, "degradation": True, "num_tokens": 4}, "time_embedding": {}}),
])
def test_a_paths_entry_merges_over_the_switches(switches, paths, expected):
    from daclip_lora.restoration.conditioning import conditioning_paths

    assert conditioning_paths(**switches, paths=paths) == expected


def test_reserved_context_slots_are_handed_out_from_the_end_without_overlap():
    from daclip_lora.restoration.conditioning import UNetCall

    call = UNetCall(torch.zeros(1, 4, 2, 2), torch.zeros(1, 10, 8))
    assert call.take_slots(2) == (8, 10) and call.take_slots(3) == (5, 8)
    with pytest.raises(ValueError, match="reserve more context positions than the 10"):
        call.take_slots(6)


@pytest.mark.parametrize("path", ["modulated_lora", "output_norm"])
def test_an_inference_call_releases_what_it_bound(assets, path):
    """After a no-grad denoise, calling the UNet directly is an error, not a reuse of the last call's conditions."""
    _, model = _model(assets, **PATHS[path])
    x = _inputs()
    with torch.no_grad():
        model(**x)
        with pytest.raises(ValueError, match="called without its conditions"):
            model.unet(torch.cat([x["noisy"], x["conditions"].lq_latent], 1), x["timesteps"],
                       encoder_hidden_states=x["text_hidden"])


def test_a_modulated_lora_refuses_dora(assets):
    from daclip_lora.restoration.lora import add_restoration_lora

    sd = load_sd_components(assets / "tiny_sd")
    cfg = dataclasses.replace(_model(assets, modulated_lora=True)[1].config,
                              lora={"rank": 4, "alpha": 4, "use_dora": True})
    with pytest.raises(ValueError, match="cannot be combined with sd.lora.use_dora"):
        add_restoration_lora(RestorationUNet(sd.unet, cfg), cfg.lora)


def test_a_folder_without_its_extras_is_refused(assets, tmp_path):
    _, model = _model(assets, output_norm=True)
    out = save_restoration(model, tmp_path / "restoration")
    (out / "restoration_extras.safetensors").unlink()
    fresh = RestorationUNet(load_sd_components(assets / "tiny_sd").unet, read_restoration_config(out))
    with pytest.raises(FileNotFoundError, match="restoration_extras.safetensors is missing.*output_norm"):
        load_restoration(fresh, out)


def test_extras_of_another_shape_are_one_line(assets, tmp_path):
    from safetensors.torch import load_file, save_file

    _, model = _model(assets, output_norm=True)
    out = save_restoration(model, tmp_path / "restoration")
    extras = load_file(str(out / "restoration_extras.safetensors"))
    extras["output_norm.linear_2.bias"] = torch.zeros(3)
    save_file(extras, str(out / "restoration_extras.safetensors"))
    fresh = RestorationUNet(load_sd_components(assets / "tiny_sd").unet, read_restoration_config(out))
    with pytest.raises(ValueError, match=r"'output_norm' weights do not fit this model \(linear_2.bias is \(3,\)"):
        load_restoration(fresh, out)


def test_a_merged_model_is_not_saved(assets, tmp_path):
    _, model = _model(assets)
    model.merge_paths()
    with pytest.raises(ValueError, match="merged into the UNet"):
        save_restoration(model, tmp_path / "restoration")


def test_a_path_is_named_by_its_registry_key(assets):
    REGISTERED_PATHS.register("toy_alias", ToyOffset)  # the class says "toy_offset"
    try:
        _, model = _model(assets, paths={"toy_alias": {}})
    finally:
        REGISTERED_PATHS.unregister("toy_alias")
    assert model.paths["toy_alias"].name == "toy_alias"
