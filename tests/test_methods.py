import pytest

from keytok.errors import KeytokError
from keytok.models.methods import PRESETS, PROMPTEOL_TEMPLATE, EmbeddingMethod, get_method


def test_presets_match_the_papers():
    assert get_method("prompteol").template == PROMPTEOL_TEMPLATE
    assert get_method("prompteol").pooling == "last"
    assert get_method("bellm").template == 'The representative word for sentence {text} is:"'
    assert get_method("bellm").bidirectional == 1
    assert get_method("wmean").pooling == "weighted_mean"
    assert get_method("instruct").pool_text_only


def test_spec_options_and_overrides():
    m = get_method("mean:bidirectional=2,append_eos=true")
    assert (m.bidirectional, m.append_eos, m.pooling) == (2, True, "mean")
    m = get_method("instruct", instruction="Find the sentiment")
    assert m.prefix == "Find the sentiment\n"
    assert get_method("last", bidirectional=None) == PRESETS["last"]


def test_key_round_trips_and_distinguishes_methods():
    keys = {get_method(name).key() for name in PRESETS}
    assert len(keys) == len(PRESETS)
    for name in PRESETS:
        assert EmbeddingMethod.from_key(get_method(name).key()) == get_method(name)
    assert get_method(get_method("bellm").key()) == get_method("bellm")


@pytest.mark.parametrize(
    "spec, fault",
    [
        ("nosuch", "unknown method 'nosuch'"),
        ("mean:pool=last", "bad method option"),
        ("mean:bidirectional=two", "must be an integer"),
        ("mean:bidirectional=-2", "must be >= 0"),
        ("mean:pooling=max", "unknown pooling"),
        ("mean:template=no placeholder", "{text}"),
    ],
)
def test_bad_specs_give_one_line_errors(spec, fault):
    with pytest.raises(KeytokError, match=None) as err:
        get_method(spec)
    assert fault in str(err.value)
    assert "\n" not in str(err.value)
