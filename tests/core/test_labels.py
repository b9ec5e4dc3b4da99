import pytest

from hpa_batch.core.labels import (
    CATALOGS,
    LabelError,
    format_labels,
    get_catalog,
    parse_labels,
)

C21, C18 = CATALOGS["hpa2021"], CATALOGS["hpa2018"]


def test_catalog_sizes_and_names():
    assert C21.n_classes == 19 and C21.classes[18] == "Negative" and C21.negative == 18
    assert C18.n_classes == 28 and C18.classes[27] == "Rods & rings" and C18.negative is None
    assert C21.index("mitochondria") == 14 and C18.index("Mitochondria") == 23


@pytest.mark.parametrize(
    "text,sep,cat,expected",
    [
        ("0|16", "|", C21, (0, 16)),
        ("16|0|0", "auto", C21, (0, 16)),
        ("25 0 2", " ", C18, (0, 2, 25)),
        ("7", "auto", C21, (7,)),
        ("18", "|", C21, (18,)),
        (5, "auto", C18, (5,)),
    ],
)
def test_parse(text, sep, cat, expected):
    assert parse_labels(text, cat, sep) == expected


@pytest.mark.parametrize("text", ["", None, "19", "0|x", "0|18", "1.5"])
def test_parse_errors(text):
    with pytest.raises(LabelError):
        parse_labels(text, C21, "auto")


def test_space_separator_rejects_pipe_strings():
    with pytest.raises(LabelError):
        parse_labels("0|16", C18, " ")


def test_round_trip_and_unknown_catalog():
    assert format_labels((16, 0), C21) == "0|16" and format_labels([25, 0], C18) == "0 25"
    with pytest.raises(ValueError, match="known"):
        get_catalog("hpa2019")
