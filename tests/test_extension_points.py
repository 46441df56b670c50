"""The registries a user extends (schedulers, SD backbones) and the option blocks each task declares."""

import dataclasses

import pytest

from daclip_lora.training import blocks as b
from daclip_lora.training.options import OptionsError, apply_overrides, parse_options


# ------------------------------------------------------------------------------ schedulers
def test_a_registered_scheduler_is_made_from_the_base_config():
    from diffusers import DDPMScheduler, UniPCMultistepScheduler

    from daclip_lora.restoration.schedulers import SCHEDULERS, make_scheduler, scheduler_name

    SCHEDULERS.register("unipc", "diffusers:UniPCMultistepScheduler")
    try:
        base = DDPMScheduler(num_train_timesteps=100, beta_schedule="scaled_linear")
        made = make_scheduler("UniPC", base)
        assert isinstance(made, UniPCMultistepScheduler) and made.config.num_train_timesteps == 100
        assert scheduler_name("unipc") == "unipc"
    finally:
        SCHEDULERS.unregister("unipc")


@pytest.mark.parametrize("name,canonical", [("DDIM", "ddim"), ("dpmpp_2m", "dpm++"), ("k_euler", "euler")])
def test_scheduler_aliases_resolve_to_registered_names(name, canonical):
    from daclip_lora.restoration.schedulers import SCHEDULERS, scheduler_name

    assert scheduler_name(name) == canonical and canonical in SCHEDULERS


def test_an_unknown_scheduler_names_the_registered_ones():
    from daclip_lora.restoration.schedulers import scheduler_name

    with pytest.raises(ValueError, match=r"unknown scheduler 'bogus'; use one of ddim, dpm\+\+, euler"):
        scheduler_name("bogus")


# ------------------------------------------------------------------------------ SD backbones
def test_a_registered_backbone_is_picked_for_the_components_it_matches():
    from daclip_lora.restoration.backbone import BACKBONES, SDBackbone, SDComponents, SDXLBackbone, backbone_for

    class Marked(SDBackbone):
        family = "marked"

        @classmethod
        def matches(cls, components):
            return getattr(components.unet, "marked", False)

    class Unet:
        marked = False

    parts = dict(unet=Unet(), vae=None, text_encoder=None, tokenizer=None, scheduler=None)
    BACKBONES.register("marked", Marked)
    try:
        assert type(backbone_for(SDComponents(**parts))) is SDBackbone
        Unet.marked = True
        assert type(backbone_for(SDComponents(**parts))) is Marked
        assert type(backbone_for(SDComponents(**parts, text_encoder_2=object(), tokenizer_2=None))) is Marked
    finally:
        BACKBONES.unregister("marked")
    Unet.marked = False
    assert type(backbone_for(SDComponents(**parts, text_encoder_2=object(), tokenizer_2=None))) is SDXLBackbone


# ------------------------------------------------------------------------------ options per task
@pytest.mark.parametrize("task,block,cls", [
    ("restoration", "sd", b.RestorationSDOptions),
    ("restoration", "runtime", b.RestorationRuntimeOptions),
    ("restoration", "sampling", b.SamplingOptions),
    ("restoration", "daclip", b.DaclipOptions),
    ("text2image", "sd", b.Text2ImageSDOptions),
    ("text2image", "runtime", b.DiffusionRuntimeOptions),
    ("text2image", "sampling", b.GenerationOptions),
    ("text2image", "daclip", b.DaclipModelOptions),
    ("controller", "controller", b.ControllerOptions),
    ("controller", "runtime", b.RuntimeOptions),
])
def test_each_block_is_built_with_the_class_its_task_declares(task, block, cls):
    opt, _ = parse_options({"name": "x", "task": task}, is_train=False, check_paths=False)
    assert type(getattr(opt, block)) is cls


@pytest.mark.parametrize("task,key", [("text2image", "fusion"), ("text2image", "conditioning"),
                                      ("restoration", "resolution"), ("restoration", "text_encoder_lora")])
def test_a_block_of_one_task_does_not_carry_another_tasks_keys(task, key):
    opt, _ = parse_options({"name": "x", "task": task}, is_train=False, check_paths=False)
    assert key not in {f.name for f in dataclasses.fields(opt.sd)}


@pytest.mark.parametrize("override,task,value", [
    ("sd.fusion=true", "restoration", True),
    ("sd.resolution=256", "text2image", 256),
    ("sampling.strength=0.5", "restoration", 0.5),
])
def test_overrides_are_typed_by_the_files_task(override, task, value):
    data = apply_overrides({"name": "x", "task": task}, [override])
    key, _, _ = override.partition("=")
    block, field = key.split(".")
    assert data[block][field] == value and type(data[block][field]) is type(value)


def test_an_override_of_another_tasks_key_is_refused_naming_the_reader():
    data = apply_overrides({"name": "x", "task": "text2image"}, ["sd.fusion=true"])
    with pytest.raises(OptionsError, match=r"sd.fusion: set, but task text2image never reads it \(it is read by "
                                           r"task restoration\)"):
        parse_options(data, is_train=False, check_paths=False)


def test_a_task_override_types_the_other_overrides():
    data = apply_overrides({"name": "x", "task": "restoration"}, ["sd.resolution=256", "task=text2image"])
    opt, _ = parse_options(data, is_train=False, check_paths=False)
    assert opt.task == "text2image" and opt.sd.resolution == 256


def test_an_unknown_override_key_names_the_closest_one():
    with pytest.raises(OptionsError, match=r"--opt sd.fusoin: unknown key 'fusoin'.*fusion"):
        apply_overrides({"name": "x", "task": "restoration"}, ["sd.fusoin=true"])


def test_a_scheduler_registered_with_capitals_is_selectable():
    from daclip_lora.restoration.schedulers import SCHEDULERS, scheduler_name

    SCHEDULERS.register("UniPC", "diffusers:UniPCMultistepScheduler")
    try:
        assert scheduler_name("unipc") == scheduler_name("UNIPC") == "UniPC"
    finally:
        SCHEDULERS.unregister("UniPC")


def test_a_path_without_options_may_be_written_as_null():
    import yaml

    data = yaml.safe_load("name: x\ntask: restoration\nsd: {conditioning: {paths: {time_embedding: }}}")
    opt, _ = parse_options(data, is_train=False, check_paths=False)
    assert opt.sd.conditioning.paths == {"time_embedding": None}


def test_an_unknown_conditioning_path_is_refused_when_the_file_is_read():
    data = {"name": "x", "task": "restoration", "sd": {"conditioning": {"paths": {"outptu_norm": {}}}}}
    with pytest.raises(OptionsError, match=r"sd.conditioning.paths.outptu_norm: not a registered conditioning path; "
                                           r"registered: context_tokens.*output_norm"):
        parse_options(data, is_train=False, check_paths=False)


def test_the_test_files_controller_adapter_is_the_one_loaded(tmp_path):
    """``daclip.adapter`` of a test file overrides the folder's: a missing one is an error naming it."""
    from daclip_lora.restoration.pipeline import RestorationPipeline
    from daclip_lora.tiny.locate import embedded_restorer

    with pytest.raises((FileNotFoundError, ValueError), match="not_an_adapter"):
        RestorationPipeline.from_pretrained(embedded_restorer(), device="cpu", daclip_adapter=str(tmp_path /
                                                                                               "not_an_adapter"))
