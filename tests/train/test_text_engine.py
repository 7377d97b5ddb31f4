"""The text commands' shared config: every bad key or value fails when the config is built."""
import pytest

from spikingformer.train.config import ConfigError
from spikingformer.train.glue import GlueConfig
from spikingformer.train.mlm import MLMConfig


@pytest.mark.parametrize("cls", [MLMConfig, GlueConfig])
@pytest.mark.parametrize("kw,msg", [
    (dict(model_args={"dpeth": 2}), r"unknown option\(s\) \['dpeth'\] for TextConfig"),
    (dict(model_args={"depth": "x"}), "TextConfig option 'depth' expects int, got 'x'"),
    (dict(model_args={"dim": 100, "num_heads": 3}), "divisible"),
    (dict(device="bogus"), "device must be auto or a torch device"),
    (dict(output=""), "output must name"),
])
def test_text_config_errors_name_the_problem(cls, kw, msg):
    with pytest.raises(ConfigError, match=msg):
        cls(**kw)
