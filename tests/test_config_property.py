"""Property: any value of any config key, given by `--set` or in a `--config` file, loads or
ends in a VicapError naming that key, never another exception (issue 19)."""
from __future__ import annotations

import json
import tempfile
from dataclasses import fields
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vicap_utils.config import SECTIONS, Config, load_config
from vicap_utils.ops.io import VicapError

KEYS = [(section, f.name) for section in SECTIONS for f in fields(getattr(Config(), section))]
JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                         max_size=2))
SET_VALUES = st.one_of(st.text(max_size=20), JSON_VALUES.map(json.dumps),
                       st.sampled_from(["-1", "4294967296", "1e999", "nan", "-inf", "0x10",
                                        "true", "None", "", " 3 ", "1_000"]))


def loads_or_names(key: str, **kwargs) -> None:
    try:
        load_config(**kwargs)
    except VicapError as exc:
        assert key in str(exc), (key, str(exc))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(KEYS), SET_VALUES)
def test_any_set_value_loads_or_names_its_key(key, value):
    section, name = key
    loads_or_names(f"{section}.{name}", profile="mini", overrides=[f"{section}.{name}={value}"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(KEYS + [("profile", "")]), JSON_VALUES)
def test_any_config_file_value_loads_or_names_its_key(key, value):
    section, name = key
    data = {section: value} if not name else {section: {name: value}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(data))
        loads_or_names(f"{section}.{name}" if name else "profile", config_file=str(path))
