import pytest

from multihead import MULTI_CANCER, Taxonomy


def test_multi_cancer_layout():
    assert MULTI_CANCER.organ_names == ("all", "brain", "breast", "cervix", "kidney", "lung_colon", "lymphoma", "oral")
    assert MULTI_CANCER.head_sizes == (4, 3, 2, 5, 2, 5, 3, 2)
    assert MULTI_CANCER.num_subtypes == 26
    assert MULTI_CANCER.subtype_names[:4] == ("all_benign", "all_early", "all_pre", "all_pro")
    assert MULTI_CANCER.organ_of("lung_scc") == "lung_colon"
    assert MULTI_CANCER.display_name("brain_tumor") == "Brain: pituitary tumour"
    assert MULTI_CANCER.display_name("kidney") == "Kidney CT"


def test_global_index_is_organ_by_organ():
    for organ_index, organ in enumerate(MULTI_CANCER.organs):
        for position, subtype in enumerate(organ.subtype_names):
            index = MULTI_CANCER.subtype_index(subtype)
            assert index == MULTI_CANCER.head_offsets[organ_index] + position
            assert MULTI_CANCER.subtype_organ_indices[index] == organ_index


def test_json_round_trip_and_fingerprint():
    again = Taxonomy.from_json(MULTI_CANCER.to_json())
    assert again == MULTI_CANCER
    assert again.fingerprint() == MULTI_CANCER.fingerprint()
    other = Taxonomy.from_dict({"a": ["a1", "a2"], "b": ["b1"]})
    assert other.fingerprint() != MULTI_CANCER.fingerprint()


def test_any_two_level_taxonomy():
    tax = Taxonomy.from_dict({"skin": ["mel", "nevus", "bcc"], "eye": ["dr", "normal"]})
    assert tax.head_sizes == (3, 2)
    assert tax.organ_of("normal") == "eye"


@pytest.mark.parametrize("mapping, message", [
    ({"a": ["x"], "b": ["x"]}, "appears twice"),
    ({"a": []}, "no subtypes"),
    ({"a.b": ["x"]}, "name must be"),
    ({}, "at least one organ"),
])
def test_invalid_taxonomies_raise(mapping, message):
    with pytest.raises(ValueError, match=message):
        Taxonomy.from_dict(mapping)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="brain_glioma"):
        MULTI_CANCER.subtype_index("glioma")
    with pytest.raises(ValueError, match="lung_colon"):
        MULTI_CANCER.organ_index("lung")
