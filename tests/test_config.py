"""Pipeline config: field-level errors, --set overrides, flags win over the file."""

import pytest

from rlaif.config import load_config, parse_set
from rlaif.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def test_file_then_set_then_flags(tmp_path):
    path = write(tmp_path, "seed: 3\ngenerate:\n  model: toy:policy\n  n: 2\n  temperature: 0.5\n")
    cfg = load_config(path, ["generate.n=6", 'generate.stop=["\\n"]'], {"generate.temperature": 0.0, "generate.top_p": None})
    assert (cfg.seed, cfg.generate.n, cfg.generate.temperature, cfg.generate.stop) == (3, 6, 0.0, ["\n"])
    assert cfg.generate.top_p == 1.0  # a flag that was not given does not override


@pytest.mark.parametrize(
    "text, expected",
    [
        ("generate:\n  n: many\n", "field 'generate.n'"),
        ("generate:\n  n: 0\n", "field 'generate.n': Input should be greater than or equal to 1"),
        ("generate:\n  engine: torchserve\n", "'generate.engine': got 'torchserve'; input should be 'transformers', 'vllm' or 'openai'"),
        ("generate:\n  temprature: 0.7\n", "unknown key 'generate.temprature'"),
        ("genrate:\n  n: 2\n", "unknown key 'genrate'"),
        ("seed: [1]\n", "field 'seed'"),
        ("generate:\n  stop: ['']\n", "field 'generate.stop'"),
        ("- a\n- b\n", "expected a mapping of sections"),
        ("generate: {n: 2\n", "invalid YAML"),
    ],
)
def test_errors_name_the_file_and_field(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_set_errors():
    with pytest.raises(ConfigError, match="expected key.path=value"):
        parse_set("generate.n")
    with pytest.raises(ConfigError, match="unknown key 'generate.nn'"):
        load_config(None, ["generate.nn=3"])
    with pytest.raises(ConfigError, match="'n' is a value, not a section"):
        load_config(None, ["generate.n=3", "generate.n.x=1"])


def test_missing_file():
    with pytest.raises(ConfigError, match="pipeline file not found"):
        load_config("no/such/file.yaml")


def test_method_defaults_live_in_the_config_and_are_recorded(tmp_path):
    """Each training method's own defaults are config fields (so RUN/pipeline.yaml shows them); a set value wins."""
    import yaml

    from rlaif.runs import record_config

    cfg = load_config(None)
    used = {m: {k: cfg.train.setting(m, k) for k in ("learning_rate", "beta", "loss_type")}
            for m in ("sft", "rm", "dpo", "kto", "grpo")}
    assert used == {"sft": {"learning_rate": 1e-4, "beta": None, "loss_type": ["nll"]},
                    "rm": {"learning_rate": 1e-4, "beta": None, "loss_type": None},
                    "dpo": {"learning_rate": 1e-5, "beta": 0.5, "loss_type": ["sigmoid"]},
                    "kto": {"learning_rate": 1e-5, "beta": 0.1, "loss_type": ["kto"]},
                    "grpo": {"learning_rate": 1e-4, "beta": None, "loss_type": None}}
    set_ = load_config(None, ["train.learning_rate=3e-4", "train.dpo.beta=0.2"])
    assert set_.train.setting("dpo", "learning_rate") == 3e-4 and set_.train.setting("dpo", "beta") == 0.2
    record_config(set_, tmp_path)
    recorded = yaml.safe_load((tmp_path / "pipeline.yaml").read_text())["train"]
    assert recorded["dpo"] == {"learning_rate": 1e-5, "beta": 0.2, "loss_type": ["sigmoid"]}
    assert recorded["learning_rate"] == 3e-4 and recorded["grpo"]["learning_rate"] == 1e-4


def test_every_config_field_is_described():
    from rlaif.config import PipelineConfig

    def fields(model, prefix=""):
        for name, field in model.model_fields.items():
            yield prefix + name, field
            inner = field.annotation
            inner = next((a for a in getattr(inner, "__args__", ()) if hasattr(a, "model_fields")), inner)
            if hasattr(inner, "model_fields"):
                yield from fields(inner, f"{prefix}{name}.")

    missing = [key for key, field in fields(PipelineConfig) if not (field.description or "").strip()]
    assert not missing, f"fields without a description: {missing}"
