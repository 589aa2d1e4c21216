"""conf/ is the one source of truth: every option of every group and every experiment composes,
validates and builds its engine; the dataclasses' defaults agree with the YAML, which lists every
key of its option's schema; a key the chosen option lacks fails naming the option's keys."""

import dataclasses
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from jaxrec.config import (
    CONF_DIR,
    CTR_DATA,
    DATA_CONFIGS,
    MODEL_CONFIGS,
    Config,
    compose_config,
    config_from_dict,
    to_dict,
)
from jaxrec.data.dataset import data_schema
from jaxrec.errors import JaxrecError
from jaxrec.train_lib import build_engine

CONF = Path(CONF_DIR)
# Small stand-ins where an option's own data needs a download or a file (the engine's tables are
# sized from the schema; nothing is read).
SYNTHETIC = ["data=synthetic", "data.num_users=50", "data.num_items=40"]
CTR = ["data=criteo_synthetic", "data.vocab_size=50", "data.num_sparse=3"]


def _options(group: str) -> list[str]:
    """Every file of the group, those in subfolders too (experiment=ml100k_zoo/mf)."""
    return sorted(p.relative_to(CONF / group).with_suffix("").as_posix() for p in (CONF / group).rglob("*.yaml"))


def _needs(group: str, option: str) -> list[str]:
    """Overrides an option needs to compose: a required path, the model its data fits."""
    if group == "data" and option in ("csv", "criteo"):
        return ["data.path=/nonexistent"] + (["model=dcn_v2"] if option == "criteo" else [])
    if group == "data" and DATA_CONFIGS[option] in CTR_DATA:
        return ["model=dcn_v2"]
    if group == "experiment" and option.endswith("/neumf_init"):
        return ["model.init_from=/a/mf/run"]  # the MF run dir its runner passes
    return []


def _stand_in(cfg: Config) -> list[str]:
    if cfg.data.name in ("synthetic", "criteo_synthetic"):
        return []
    return CTR if isinstance(cfg.data, CTR_DATA) else SYNTHETIC


@pytest.mark.parametrize(
    "group,option",
    [(g, o) for g in ("data", "model", "optimizer", "sharding", "train", "experiment", "sweep") for o in _options(g)],
)
def test_every_option_composes_and_builds_its_engine(group, option):
    if option == "optuna_lr_wd":
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    overrides = [f"{group}={option}", *_needs(group, option), "sharding.num_devices=null"]
    cfg = compose_config(overrides)
    if group in ("data", "model"):
        assert getattr(cfg, group).name == option
        assert type(getattr(cfg, group)) is {"data": DATA_CONFIGS, "model": MODEL_CONFIGS}[group][option]
    assert config_from_dict(to_dict(cfg)) == cfg  # what results.json and checkpoints hold restores it
    cfg = compose_config([o for o in overrides if not o.startswith("data")] + _stand_in(cfg))
    cfg.sharding.mesh.data = cfg.sharding.mesh.model = 1
    engine = build_engine(cfg, data_schema(cfg.data))
    assert engine.collection.specs


def _yaml_keys(path: Path) -> set[str]:
    """Keys a conf file sets for its option, including the shared files its defaults list pulls in."""
    raw = OmegaConf.to_container(OmegaConf.load(path))
    keys = set(raw.get("model", raw) if "model" in raw else raw) - {"defaults"}
    for entry in raw.get("defaults", []):
        if isinstance(entry, str) and entry.startswith("/data_shared/"):
            keys |= _yaml_keys(CONF / f"{entry.split('@')[0].lstrip('/')}.yaml")
    return keys


@pytest.mark.parametrize("group,schemas", [("data", DATA_CONFIGS), ("model", MODEL_CONFIGS)])
def test_dataclass_defaults_agree_with_conf(group, schemas):
    for option, schema in schemas.items():
        cfg = compose_config([f"{group}={option}", *_needs(group, option)])
        composed, default = getattr(cfg, group), schema(name=option)
        fields = {f.name for f in dataclasses.fields(schema)}
        if group == "data" and option in ("csv", "criteo"):
            composed.path = None  # the required path the test had to give
        assert composed == default, option
        assert _yaml_keys(CONF / group / f"{option}.yaml") == fields, f"conf/{group}/{option}.yaml lists every key"


def test_the_default_run_is_the_dataclass_default():
    assert compose_config() == Config()
    for group, option in (("optimizer", "adam"), ("sharding", "none"), ("train", "default")):
        listed = set(OmegaConf.load(CONF / group / f"{option}.yaml"))
        assert listed == {f.name for f in dataclasses.fields(getattr(Config(), group))}, group


def test_a_model_brings_its_training_defaults_and_the_command_line_wins():
    sasrec = compose_config(["model=sasrec"])
    assert (sasrec.train.batch_size, sasrec.data.num_negatives) == (128, 100)
    assert compose_config(["model=sasrec", "train.batch_size=64"]).train.batch_size == 64
    assert compose_config(["model=dcn_v2"]).data.name == "criteo_synthetic"
    assert compose_config(["model=svdpp"]).train.select_metric == "rmse"


def test_a_key_the_option_lacks_names_the_options_keys():
    with pytest.raises(
        JaxrecError,
        match=r"model.cross_layers does not exist in MFConfig \(model\); its keys: "
        r"name, dim, loss, init_std, l2, embedding_dtype, use_bias, bias_init$",
    ):
        compose_config(["model.cross_layers=5"])
    assert compose_config(["model=dcn_v2", "model.cross_layers=5"]).model.cross_layers == 5
    assert "cross_layers" not in to_dict(compose_config())["model"]  # results.json: the chosen option's keys only


def test_a_model_on_data_it_cannot_read_fails_at_compose():
    with pytest.raises(JaxrecError, match=r"model=dcn_v2 trains on CTR examples .* data=ml100k holds user-item"):
        compose_config(["model=dcn_v2", "data=ml100k"])
    with pytest.raises(JaxrecError, match=r"data=criteo_synthetic holds CTR examples .* model=mf needs interactions"):
        compose_config(["data=criteo_synthetic"])


def _readme_config_errors() -> list[str]:
    """Every `jaxrec: error: config key K=V...` the README quotes whose K=V alone triggers it."""
    readme = (CONF.parent / "README.md").read_text()
    quoted = sorted(set(re.findall(r"`(jaxrec: error: config key [^`]*)`", readme)))
    return [q for q in quoted if "catalogue" not in q]  # that one needs a loaded data set (tests/test_failures.py)


@pytest.mark.parametrize("quoted", _readme_config_errors())
def test_the_readmes_quoted_config_errors_are_the_real_ones(quoted):
    key, value = re.match(r"jaxrec: error: config key ([\w.]+)(?:=('[^']*'|[^:]*))?", quoted).groups()
    override = f"{key}={(value or '5').strip(chr(39))}"
    with pytest.raises(JaxrecError) as err:
        compose_config([override])
    assert f"jaxrec: error: {err.value}" == quoted


@pytest.mark.parametrize("overrides", [["data=criteo_synthetic"], ["data=nope"]])
def test_the_readmes_quoted_composition_errors_are_the_real_ones(overrides):
    with pytest.raises(JaxrecError) as err:
        compose_config(overrides)
    quoted = f"jaxrec: error: {err.value}"
    readme = (CONF.parent / "README.md").read_text()
    if "(...)" in readme.split(quoted[:60], 1)[-1].split("`", 1)[0]:  # a long list elided in the README
        quoted = quoted[: quoted.index("(", 60)] + "(...)"
    assert quoted in readme, quoted


def _readme_commands() -> list[tuple[str, list[str]]]:
    """The overrides of every `python -m jaxrec.train|plan` command in the READMEs, one sweep value
    each (the first), placeholders filled, Hydra's own keys and flags left out."""
    found = []
    for readme in [CONF.parent / "README.md", *sorted((CONF.parent / "experiments").rglob("README.md"))]:
        text = readme.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            command = re.search(r"(?:python -m jaxrec\.(?:train|plan)|jaxrec-(?:train|plan))\b(.*)", line)
            if not command:
                continue
            args = command.group(1).split("#")[0].split("`")[0].replace("$V", "[10,10]").replace("$RANK", "0")
            overrides = [arg.strip("\"'") for arg in args.split()]
            overrides = [arg for arg in overrides if "=" in arg and not arg.startswith(("-", "hydra", "+hydra"))]
            overrides = [re.sub(r"=([^\[,]*),.*", r"=\1", arg) for arg in overrides]  # a sweep's first value
            if any("$" in arg for arg in overrides):  # a shell loop's variable
                group, _, option = next(arg for arg in overrides if "$" in arg).partition("=")
                if group != "experiment":
                    continue
                arms = [
                    f"experiment={p.relative_to(CONF / group).with_suffix('').as_posix()}"
                    for p in sorted((CONF / group / option.split("/$")[0]).glob("*.yaml"))
                ]
                found += [
                    (readme.relative_to(CONF.parent).as_posix(), [arm if "$" in arg else arg for arg in overrides])
                    for arm in arms
                ]
                continue
            models = MODEL_CONFIGS if "model=<m>" in overrides else [None]
            for model in models:
                found.append(
                    (
                        readme.relative_to(CONF.parent).as_posix(),
                        [f"model={model}" if arg == "model=<m>" else arg for arg in overrides],
                    )
                )
    return found


@pytest.mark.parametrize("where,overrides", _readme_commands())
def test_every_documented_command_composes(where, overrides):
    if any(arg.endswith("optuna_lr_wd") for arg in overrides):
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    compose_config(overrides)
